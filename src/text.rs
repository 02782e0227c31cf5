//! Small text helpers: caller-provided text that an error message echoes back is cut short,
//! so a hostile key or value cannot make an error huge; and bytes as lowercase hex (digests,
//! signatures, tokens).

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

/// `bytes` as lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
