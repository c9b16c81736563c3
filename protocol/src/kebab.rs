//! The reference's `camelCaseToKebabCase`: how an agent class name becomes a URL segment.

use alloc::string::String;

/// Converts an agent class (or binding) name into its URL segment, exactly as
/// the reference's `camelCaseToKebabCase` does.
///
/// 1. An ALL-CAPS name is lower-cased, `_` becomes `-`, and that is all.
/// 2. Otherwise each ASCII capital `X` becomes `-x`, one leading `-` is
///    dropped, every `_` becomes `-`, and one trailing `-` is dropped.
///
/// Non-ASCII capitals are left alone and digits never split.
///
/// ```
/// use agents_protocol::camel_case_to_kebab_case as kebab;
/// assert_eq!(kebab("ChatAgent"), "chat-agent");
/// assert_eq!(kebab("AIAssistant"), "a-i-assistant");
/// assert_eq!(kebab("MY_AGENT"), "my-agent");
/// ```
pub fn camel_case_to_kebab_case(name: &str) -> String {
    camel_case_to_kebab_case_with(name, str::to_uppercase, str::to_lowercase)
}

/// [`camel_case_to_kebab_case`] with the Unicode case mappings supplied by
/// the caller (the browser client passes JavaScript's, which avoids shipping
/// Rust's case tables in its WebAssembly).
pub fn camel_case_to_kebab_case_with(
    name: &str,
    to_upper: impl Fn(&str) -> String,
    to_lower: impl Fn(&str) -> String,
) -> String {
    let lower = to_lower(name);
    if name == to_upper(name) && name != lower {
        return lower
            .chars()
            .map(|c| if c == '_' { '-' } else { c })
            .collect();
    }
    // One pass: `X` → `-x` and `_` → `-`.
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            out.push('-');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(if c == '_' { '-' } else { c });
        }
    }
    // The reference drops one leading `-` before it turns `_` into `-`: one
    // from a capital or the name itself goes, one from `_` stays.
    if name.starts_with(|c: char| c == '-' || c.is_ascii_uppercase()) {
        out.remove(0);
    }
    if out.ends_with('-') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::camel_case_to_kebab_case as kebab;

    /// Every example the spec lists (observed from the reference function).
    #[test]
    fn matches_the_reference_table() {
        let cases = [
            ("Counter", "counter"),
            ("MyAgent", "my-agent"),
            ("myAgent", "my-agent"),
            ("my_agent", "my-agent"),
            ("MY_AGENT", "my-agent"),
            ("ChatRoom", "chat-room"),
            ("AIAssistant", "a-i-assistant"),
            ("HTTPServer", "h-t-t-p-server"),
            ("CF", "cf"),
            ("ABC", "abc"),
            ("My_Agent", "my--agent"),
            ("my-Agent", "my--agent"),
            ("Agent2", "agent2"),
            ("V2Agent", "v2-agent"),
            ("FooBar-", "foo-bar"),
            ("ÄgentX", "Ägent-x"),
            ("ChatAgent", "chat-agent"),
            ("EchoAgent", "echo-agent"),
            ("", ""),
            ("_foo", "-foo"),
            ("-foo", "foo"),
            ("Foo_", "foo"),
            ("A_", "a-"),
        ];
        for (input, want) in cases {
            assert_eq!(kebab(input), want, "kebab({input:?})");
        }
    }
}
