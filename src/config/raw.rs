//! The TOML file as written (serde, `deny_unknown_fields`).
