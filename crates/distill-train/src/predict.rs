//! Streaming batch prediction over an input file.
