//! On-disk spool (being written).
