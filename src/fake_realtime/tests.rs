//! Core tests of the fake server on simulated time.
