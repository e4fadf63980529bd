//! The clock: epoch times and the timestamps PostHog renders.

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch, for locks whose `Retry-After` must be exact.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch, for ordering.
pub fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// An ISO 8601 UTC timestamp with microseconds, as PostHog renders dates.
pub fn iso_now() -> String {
    iso_at_micros(now_micros())
}

/// [`iso_now`] for a given time (microseconds since the Unix epoch). Always six digits of
/// fraction, so that two such timestamps compare as strings as they do as times (DynamoDB
/// conditions compare them so).
pub fn iso_at_micros(micros: u64) -> String {
    let seconds = aws_smithy_types::DateTime::from_secs((micros / 1_000_000) as i64)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string());
    format!(
        "{}.{:06}Z",
        seconds.trim_end_matches('Z'),
        micros % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_six_digits_and_sort_as_times() {
        assert_eq!(iso_at_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            iso_at_micros(1_764_235_785_069_403),
            "2025-11-27T09:29:45.069403Z"
        );
        let times = [
            1_764_235_785_000_000u64,
            1_764_235_785_000_001,
            1_764_235_785_100_000,
            1_764_235_785_120_000,
            1_764_235_786_000_000,
        ];
        let texts: Vec<String> = times.iter().map(|&t| iso_at_micros(t)).collect();
        let mut sorted = texts.clone();
        sorted.sort();
        assert_eq!(sorted, texts);
    }
}
