//! Log helpers: user-controlled strings (agent segments, names, ids,
//! reasons, error texts) are cut to [`MAX_LOG_FIELD`] bytes in every log
//! line, so a hostile client cannot flood the logs.

use std::fmt;

/// Longest user-controlled string a log line carries, in bytes.
pub const MAX_LOG_FIELD: usize = 256;

/// Displays a string cut to [`MAX_LOG_FIELD`] bytes, noting how long it was.
pub(crate) struct Trunc<'a>(pub(crate) &'a str);

impl fmt::Display for Trunc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s.len() <= MAX_LOG_FIELD {
            return f.write_str(s);
        }
        let cut = crate::message::truncate(s, MAX_LOG_FIELD);
        write!(f, "{cut}… ({} bytes)", s.len())
    }
}

impl fmt::Debug for Trunc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", Trunc(self.0).to_string())
    }
}

/// A close frame's code and reason, for logs.
pub(crate) struct CloseDisplay<'a>(pub(crate) u16, pub(crate) &'a str);

impl fmt::Display for CloseDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.0, Trunc(self.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_are_cut() {
        assert_eq!(Trunc("short").to_string(), "short");
        let long = "é".repeat(1000);
        let shown = Trunc(&long).to_string();
        assert!(shown.len() < MAX_LOG_FIELD + 20, "{}", shown.len());
        assert!(shown.ends_with("… (2000 bytes)"));
        assert_eq!(CloseDisplay(1000, "bye").to_string(), "1000 \"bye\"");
    }
}
