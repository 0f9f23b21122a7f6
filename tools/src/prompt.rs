//! Greenplum's yes/no questions (gppylib's userinput.ask_yesno):
//! `Continue with segment recovery procedure Yy|Nn (default=N):` then `> `.

use std::io::{BufRead, Write};

/// The question as shown.
pub fn question(text: &str, default_yes: bool) -> String {
    format!("{text} Yy|Nn (default={}):\n> ", if default_yes { "Y" } else { "N" })
}

/// The answer a line gives: Some(yes) or None (ask again). An empty line
/// takes the default.
pub fn answer(line: &str, default_yes: bool) -> Option<bool> {
    match line.trim().to_ascii_lowercase().as_str() {
        "" => Some(default_yes),
        "y" | "yes" => Some(true),
        "n" | "no" => Some(false),
        _ => None,
    }
}

/// Asks on stdout and reads stdin until an answer; end of input takes the
/// default, so a command fed from a pipe never hangs on a question.
pub fn ask(banner: Option<&str>, text: &str, default_yes: bool) -> std::io::Result<bool> {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut out = std::io::stdout();
    if let Some(b) = banner {
        writeln!(out, "\n{b}")?;
    }
    loop {
        write!(out, "\n{}", question(text, default_yes))?;
        out.flush()?;
        let mut line = String::new();
        if input.read_line(&mut line)? == 0 {
            writeln!(out)?;
            return Ok(default_yes);
        }
        if let Some(yes) = answer(&line, default_yes) {
            return Ok(yes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_question_reads_as_greenplum_s() {
        assert_eq!(
            question("Continue with segment recovery procedure", false),
            "Continue with segment recovery procedure Yy|Nn (default=N):\n> "
        );
    }

    #[test]
    fn answers() {
        assert_eq!(answer("y\n", false), Some(true));
        assert_eq!(answer("YES", false), Some(true));
        assert_eq!(answer(" n ", true), Some(false));
        assert_eq!(answer("\n", false), Some(false), "the default");
        assert_eq!(answer("", true), Some(true));
        assert_eq!(answer("maybe", false), None, "asked again");
    }
}
