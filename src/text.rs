//! Caller-provided text that an error message echoes back is cut short, so a hostile key or
//! value cannot make an error huge.

/// Characters of caller text an error message repeats.
const MAX_ECHO_CHARS: usize = 64;

/// `text`, or its first characters followed by "…".
pub fn shorten(text: &str) -> String {
    if text.chars().count() <= MAX_ECHO_CHARS {
        text.to_owned()
    } else {
        format!("{}…", text.chars().take(MAX_ECHO_CHARS).collect::<String>())
    }
}
