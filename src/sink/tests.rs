//! Unit tests of the sans-IO server.
