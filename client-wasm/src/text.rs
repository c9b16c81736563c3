//! Numbers into text without `core::fmt`, which would add several KB to the WebAssembly.

use alloc::string::String;

/// Appends `value` in lowercase hexadecimal, zero-padded to `width` digits
/// (`format!("{value:0width$x}")`).
pub fn push_hex(out: &mut String, value: u64, width: u32) {
    push_hex_digits(out, value, width, b"0123456789abcdef");
}

/// [`push_hex`] with uppercase digits (`format!("{value:0width$X}")`).
pub fn push_hex_upper(out: &mut String, value: u64, width: u32) {
    push_hex_digits(out, value, width, b"0123456789ABCDEF");
}

fn push_hex_digits(out: &mut String, value: u64, width: u32, digits: &[u8; 16]) {
    let count = (64 - value.leading_zeros()).div_ceil(4).max(width).max(1);
    for i in (0..count).rev() {
        let nibble = value.checked_shr(i * 4).unwrap_or(0) & 0xf;
        out.push(digits[nibble as usize] as char);
    }
}

/// Appends `value` in decimal (`format!("{value}")`).
pub fn push_decimal(out: &mut String, value: u64) {
    if value >= 10 {
        push_decimal(out, value / 10);
    }
    out.push(char::from(b'0' + (value % 10) as u8));
}

/// `value` in decimal.
pub fn decimal(value: u64) -> String {
    let mut out = String::new();
    push_decimal(&mut out, value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_core_fmt() {
        for v in [0, 1, 9, 10, 15, 16, 255, 4096, 65_535, 1 << 40, u64::MAX] {
            assert_eq!(decimal(v), format!("{v}"));
            for width in [0, 1, 3, 8, 16, 20] {
                let mut s = String::new();
                push_hex(&mut s, v, width);
                assert_eq!(s, format!("{v:0w$x}", w = width as usize), "{v} {width}");
                let mut s = String::new();
                push_hex_upper(&mut s, v, width);
                assert_eq!(s, format!("{v:0w$X}", w = width as usize), "{v} {width}");
            }
        }
    }
}
