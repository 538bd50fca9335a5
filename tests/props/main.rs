//! Property tests of every network decoder (issue 13): arbitrary input never panics,
//! encoded messages decode back to themselves, framing does not depend on how the bytes
//! arrive, and oversize input is refused with the protocol's error.
//!
//! Each property runs `strategies::config()` cases (256 unless `PROPTEST_CASES` says
//! otherwise); a failure prints the shrunk input and is kept under `proptest-regressions/`.
//! The fuzz targets in `fuzz/` drive the same decoders with coverage guidance
//! (`docs/testing.md`).

mod bester;
mod compendium;
mod longpoll;
mod phoenix;
mod relay;
mod strategies;
