//! An `Exec=` line split into arguments the way dbus-daemon splits it (dbus-shell.c, after
//! GLib's shell parser): whitespace separates words; `'...'` is literal; in `"..."` a
//! backslash escapes `$ \` " \\` and newline; outside quotes a backslash escapes any
//! character; a `#` at the start of a word begins a comment. No variables, no globbing.

pub fn split(line: &str) -> Result<Vec<String>, &'static str> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '#' if !in_word => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("Unclosed quotes in command line"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('$' | '`' | '"' | '\\')) => word.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("Unclosed quotes in command line"),
                        },
                        Some(c) => word.push(c),
                        None => return Err("Unclosed quotes in command line"),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    word.push(c);
                }
                None => {
                    in_word = true;
                    word.push('\\');
                }
            },
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("No tokens found in command line");
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quoting_as_the_shell_does_it() {
        assert_eq!(
            split(r#"/bin/sh -c 'touch "$1"; exit 1' sh '/tmp/x y'"#).unwrap(),
            vec!["/bin/sh", "-c", r#"touch "$1"; exit 1"#, "sh", "/tmp/x y"]
        );
        assert_eq!(
            split(r#"a "b \"c\" \$d \e" f\ g"#).unwrap(),
            vec!["a", r#"b "c" $d \e"#, "f g"]
        );
        assert_eq!(split("a #comment\nb").unwrap(), vec!["a", "b"]);
        assert_eq!(split("a#b").unwrap(), vec!["a#b"]);
        assert_eq!(split("''").unwrap(), vec![""]);
    }

    #[test]
    fn errors() {
        assert_eq!(split("a 'b"), Err("Unclosed quotes in command line"));
        assert_eq!(split("a \"b"), Err("Unclosed quotes in command line"));
        assert_eq!(split("   "), Err("No tokens found in command line"));
    }

    proptest! {
        /// Words quoted with single quotes come back unchanged.
        #[test]
        fn single_quoted_words_round_trip(words in prop::collection::vec("[^']{0,12}", 1..6)) {
            let line: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
            prop_assert_eq!(split(&line.join(" ")).unwrap(), words);
        }
    }
}
