//! End-to-end tests for busd live in `tests/`.
