//! The deployment files of meshrpc (`Dockerfile`, `docker-compose.yml`, `kubernetes/`) live in
//! this directory; this crate holds no code, only the tests in `tests/` that parse those files
//! and check them against each other and against the flags the binaries accept.
