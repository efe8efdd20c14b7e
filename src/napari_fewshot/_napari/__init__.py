"""napari contributions (reader, writer, sample data, widget); thin over io/ and core/."""
