//! Durations (`"500ms"`, `"5s"`, `"2m"`), sizes (`"64KiB"`, `"100MiB"`).

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    Err(format!("cannot parse duration {text:?}"))
}

pub fn parse_size(text: &str) -> Result<u64, String> {
    Err(format!("cannot parse size {text:?}"))
}
