//! Passwords kept off the screen: a `-d` connection string is shown (in the
//! starting line, in errors) with every password value replaced by
//! `********`. Malformed strings are redacted as far as they can be read
//! and never less: whatever libpq or tokio-postgres could take for a
//! password is masked, and a little more when the two disagree.

const MASK: &str = "********";

/// tokio-postgres's keywords: public words, kept when its messages quote them.
const KEYWORDS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslmode",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// `conninfo` with every password value replaced by `********`. In the
/// `key=value` form: the value of every key naming a password (`password`,
/// libpq's `sslpassword`, misspellings such as `passwd`, in any case),
/// quoted or bare, with spaces around `=` or without the `=`; an
/// unterminated quoted value is masked to the end. In a URL
/// (`scheme://...`): the userinfo's password and every query parameter
/// naming a password (its name percent-decoded).
pub fn redact_conninfo(conninfo: &str) -> String {
    if is_url(conninfo.trim_start()) {
        redact_url(conninfo)
    } else {
        redact_keywords(conninfo)
    }
}

/// The arguments as the starting line shows them: the `-d` value (`conninfo`,
/// as clap read it) redacted wherever it stands (`-d V`, `-dV`, `-qd=V`),
/// and every other argument redacted as a connection string too, for one
/// given without `-d` (nothing changes in paths, host lists or numbers).
pub fn redact_args(args: &[String], conninfo: Option<&str>) -> String {
    let conninfo = conninfo.filter(|c| !c.is_empty());
    args.iter()
        .map(|a| match conninfo.and_then(|c| a.strip_suffix(c).map(|flag| (flag, c))) {
            Some((flag, c)) => format!("{flag}{}", redact_conninfo(c)),
            None => redact_conninfo(a),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A host name as messages show it: a host holding `@` came from a URL
/// whose password held a raw `@` (`postgresql://u:p@ss@cdw`), so what
/// precedes its last `@` is password.
pub fn redact_host(host: &str) -> String {
    match host.rfind('@') {
        Some(at) => format!("{MASK}{}", &host[at..]),
        None => host.to_string(),
    }
}

/// A library's reason for refusing a connection string, each `backquoted`
/// piece masked unless it is `=`, one of tokio-postgres's keywords, or a
/// key that `redacted` (the string as shown) shows anyway: the library
/// quotes pieces of its input there (`unknown option `hots``, `but got
/// `c``), and a misquoted password can be such a piece.
pub fn redact_reason(reason: &str, redacted: &str) -> String {
    // Two characters at least: a one-letter key matching "got `c`" would tell a password's character.
    let shown_keys: Vec<&str> = redacted
        .split(|c: char| c.is_whitespace() || c == '?' || c == '&')
        .filter_map(|w| w.split_once('=').map(|(k, _)| k))
        .filter(|k| k.chars().count() > 1)
        .collect();
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(open) = rest.find('`') {
        out.push_str(&rest[..=open]);
        let Some(len) = rest[open + 1..].find('`') else {
            // No closing quote: what follows may be input.
            out.push_str(MASK);
            return out;
        };
        let piece = &rest[open + 1..open + 1 + len];
        let public = piece == "=" || KEYWORDS.contains(&piece) || shown_keys.contains(&piece);
        out.push_str(if public { piece } else { MASK });
        out.push('`');
        rest = &rest[open + len + 2..];
    }
    out.push_str(rest);
    out
}

/// `scheme://` at the start, as libpq and tokio-postgres tell a URL (any
/// scheme: a misspelt one is still printed in the error it causes).
fn is_url(s: &str) -> bool {
    s.find("://").is_some_and(|i| {
        let mut scheme = s[..i].chars();
        scheme.next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

fn is_password_key(key: &str) -> bool {
    key.trim().to_ascii_lowercase().contains("pass")
}

/// A token of the `key=value` form that is not a password: a URL inside it
/// (a key or value written as one) is redacted as a URL.
fn shown_token(token: &str) -> String {
    if token.contains("://") {
        redact_url(token)
    } else {
        token.to_string()
    }
}

/// The end of the run of characters from `at` for which `f` holds.
fn skip(s: &str, at: usize, f: impl Fn(char) -> bool) -> usize {
    s[at..].char_indices().find(|(_, c)| !f(*c)).map_or(s.len(), |(i, _)| at + i)
}

/// The end of a value starting at `start`: libpq's grammar, a quoted
/// value to its closing quote (to the end when there is none), a bare one
/// to white space, backslash escaping the next character in both.
fn value_end(s: &str, start: usize) -> usize {
    let quoted = s[start..].starts_with('\'');
    let mut chars = s[start..].char_indices().skip(usize::from(quoted));
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '\'' if quoted => return start + i + 1,
            c if !quoted && c.is_whitespace() => return start + i,
            _ => {}
        }
    }
    s.len()
}

fn redact_keywords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    while at < s.len() {
        let key_start = skip(s, at, char::is_whitespace);
        out.push_str(&s[at..key_start]);
        let key_end = skip(s, key_start, |c| !c.is_whitespace() && c != '=');
        let key = &s[key_start..key_end];
        out.push_str(&shown_token(key));
        at = key_end;
        let equals = skip(s, key_end, char::is_whitespace);
        let secret = is_password_key(key);
        let value_start = if s[equals..].starts_with('=') {
            skip(s, equals + 1, char::is_whitespace)
        } else if secret && equals < s.len() {
            // A password written without its `=` is a password all the same.
            equals
        } else {
            continue;
        };
        out.push_str(&s[key_end..value_start]);
        let end = value_end(s, value_start);
        if secret {
            out.push_str(MASK);
        } else {
            out.push_str(&shown_token(&s[value_start..end]));
        }
        at = end;
    }
    out
}

/// The URL with its passwords masked: the userinfo's, taken up to the last
/// `@` before the host's end (tokio-postgres stops at the first `@`, libpq
/// at the first `@` or `/`; a raw `@` or `/` in a password is masked whole),
/// and each `?`/`&` parameter naming a password, up to the next `&` that
/// starts a `key=value` (a raw `&` in a password is masked with it).
fn redact_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
        return s.to_string();
    };
    let rest = &s[scheme_end..];
    let mut masked: Vec<(usize, usize)> = Vec::new();
    if let Some(first_at) = rest.find('@') {
        let host_end = rest[first_at..].find(['/', '?']).map_or(rest.len(), |i| first_at + i);
        let last_at = rest[..host_end].rfind('@').unwrap_or(first_at);
        if let Some(colon) = rest[..last_at].find(':') {
            masked.push((colon + 1, last_at));
        }
    }
    let mut in_password = false;
    for (start, _) in rest.match_indices(['?', '&']) {
        let from = start + 1;
        let to = rest[from..].find(['?', '&']).map_or(rest.len(), |i| from + i);
        let param = &rest[from..to];
        match param.find('=') {
            None if in_password => {
                if let Some(last) = masked.last_mut() {
                    last.1 = to;
                }
            }
            Some(eq) if is_password_key(&percent_decoded(&param[..eq])) => {
                masked.push((from + eq + 1, to));
                in_password = true;
            }
            _ => in_password = false,
        }
    }
    masked.sort_unstable();
    let mut out = s[..scheme_end].to_string();
    let mut at = 0;
    for (from, to) in masked {
        if to < at {
            continue;
        }
        let from = from.max(at);
        out.push_str(&rest[at..from]);
        out.push_str(MASK);
        at = to;
    }
    out.push_str(&rest[at..]);
    out
}

/// `%XX` decoded (invalid sequences kept as written), for parameter names.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).and_then(|c| char::from(*c).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits make at most 255.
                out.push(u8::try_from(high * 16 + low).unwrap_or(u8::MAX));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> String {
        redact_conninfo(s)
    }

    #[test]
    fn keyword_passwords_are_masked() {
        for (input, shown) in [
            ("host=x port=5432 password=secret user=u", "host=x port=5432 password=******** user=u"),
            ("password=secret", "password=********"),
            ("password = secret user=u", "password = ******** user=u"),
            ("password= secret", "password= ********"),
            ("password =secret", "password =********"),
            ("\tpassword\t=\tsecret\n", "\tpassword\t=\t********\n"),
            ("password='se cret' user=u", "password=******** user=u"),
            (r"password='it\'s secret' user=u", "password=******** user=u"),
            (r"password=a\ b user=u", "password=******** user=u"),
            (r"password=a\\ user=u", "password=******** user=u"),
            ("PASSWORD=secret Password=secret", "PASSWORD=******** Password=********"),
            ("sslpassword=secret", "sslpassword=********"),
            ("passwd=secret user=u", "passwd=******** user=u"),
            ("password='unterminated user=u", "password=********"),
            ("password='unterminated\\", "password=********"),
            ("password=", "password=********"),
            ("password=''", "password=********"),
            ("password secret user=u", "password ******** user=u"),
            ("user=u password", "user=u password"),
            ("password=one password=two", "password=******** password=********"),
            ("password=pässwörd user=ü", "password=******** user=ü"),
        ] {
            assert_eq!(r(input), shown, "{input}");
        }
    }

    #[test]
    fn other_keywords_are_shown_as_written() {
        for s in [
            "",
            "   ",
            "host=cdw port=5433 dbname=gp",
            "application_name='my app' options='-c search_path=x'",
            "host=a nonsense",
            "=x",
            "user=pass\\",
            "'quoted",
        ] {
            assert_eq!(r(s), s);
        }
        // A value naming a password is not a key: only a key's value is one.
        assert_eq!(r("user=password"), "user=password");
        assert_eq!(r("options='-c password=x'"), "options='-c password=x'");
    }

    #[test]
    fn url_passwords_are_masked() {
        for (input, shown) in [
            (
                "postgresql://u:secret@host:5432/db?password=x&sslmode=require",
                "postgresql://u:********@host:5432/db?password=********&sslmode=require",
            ),
            ("postgres://u:secret@host", "postgres://u:********@host"),
            ("postgresql://u:@host", "postgresql://u:********@host"),
            ("postgresql://u:p%40ss@host/db", "postgresql://u:********@host/db"),
            ("postgresql://u:p@ss@host/db", "postgresql://u:********@host/db"),
            ("postgresql://u:pa/ss@host/db", "postgresql://u:********@host/db"),
            ("postgresql://u:pa?ss@host/db", "postgresql://u:********@host/db"),
            ("postgresql://host/db?password=x", "postgresql://host/db?password=********"),
            ("postgresql://host/db?PassWord=x&user=u", "postgresql://host/db?PassWord=********&user=u"),
            ("postgresql://host/db?%70assword=x&user=u", "postgresql://host/db?%70assword=********&user=u"),
            ("postgresql://host/db?password=a&b&sslmode=x", "postgresql://host/db?password=********&sslmode=x"),
            ("postgresql://host/db?password=a@b", "postgresql://host/db?password=********"),
            ("postgresql://host/db?user=u&password", "postgresql://host/db?user=u&password"),
            ("postgresql://host/db?password=", "postgresql://host/db?password=********"),
            ("  postgresql://u:secret@host", "  postgresql://u:********@host"),
            ("postgre://u:secret@host", "postgre://u:********@host"),
            ("POSTGRESQL://u:secret@host", "POSTGRESQL://u:********@host"),
            // tokio-postgres would read "5432/db?x=a" as the password: masked too.
            ("postgresql://host:5432/db?x=a@b", "postgresql://host:********@b"),
            ("postgresql://u:pw@host/db?password=p:w@x", "postgresql://u:********@host/db?password=********"),
        ] {
            assert_eq!(r(input), shown, "{input}");
        }
    }

    #[test]
    fn urls_without_passwords_are_shown_as_written() {
        for s in [
            "postgresql://",
            "postgresql://host",
            "postgresql://u@host:5432/db",
            "postgresql://host/db?sslmode=require&application_name=a%20b",
            "postgresql://[::1]:5432/db",
            "postgresql://u@host/db?%zz=1&%=2&x",
            "postgresql://?&&=",
            "postgresql://ü@hôst/db",
        ] {
            assert_eq!(r(s), s);
        }
    }

    #[test]
    fn a_url_inside_keywords_is_redacted_as_a_url() {
        assert_eq!(r("host=x postgresql://u:pw@h"), "host=x postgresql://u:********@h");
        assert_eq!(r("application_name=http://u:pw@h"), "application_name=http://u:********@h");
    }

    #[test]
    fn malformed_input_never_panics_and_hides_what_could_be_a_password() {
        let secret = "S3cr3t";
        for shape in [
            "password='{}",
            "password='{}\\",
            "password=\\{}",
            "password {}",
            "password=  '{}' '",
            "postgresql://u:{}",
            "postgresql://u:{}@",
            "postgresql://:{}@@@",
            "postgresql://u:{}@h?password",
            "postgresql://h?password={}",
            "postgresql://h?%70assword={}",
            "postgresql://h?%70assword=%{}",
            "postgresql://h?password={}&&&",
            "postgre://u:{}@h",
            "x://u:{}@h",
        ] {
            let input = shape.replace("{}", secret);
            let shown = r(&input);
            // A URL without `@` has no userinfo: "u:..." is a host and port there.
            if shape != "postgresql://u:{}" {
                assert!(!shown.contains(secret), "{input} -> {shown}");
            }
        }
        // Every string of up to four of these pieces.
        let pieces = ["password", "postgresql://", "=", "'", "\\", " ", "@", ":", "/", "?", "&", "%", "%7", "ü"];
        let mut inputs = vec![String::new()];
        for _ in 0..4 {
            inputs = inputs.iter().flat_map(|i| pieces.iter().map(move |p| format!("{i}{p}"))).collect();
            for input in &inputs {
                let _ = redact_reason(input, &r(input));
            }
        }
        // Every prefix of the real forms, cut anywhere (inside characters too).
        for full in [
            r"host=h password='a b\'c' user=u",
            "postgresql://u:p@ss@h:1/db?password=x&sslmode=require",
            "postgresql://ü:pä@h/d?pässword=ö&%e2%82=x",
        ] {
            for end in (0..=full.len()).filter(|e| full.is_char_boundary(*e)) {
                let _ = r(&full[..end]);
                let _ = redact_reason(&full[..end], &full[..end]);
            }
        }
    }

    #[test]
    fn the_starting_line_s_arguments() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = "host=x password=secret";
        assert_eq!(redact_args(&args(&["-m", "-d", c]), Some(c)), "-m -d host=x password=********");
        let c = "password=secret";
        assert_eq!(redact_args(&args(&["-dpassword=secret", "-m"]), Some(c)), "-dpassword=******** -m");
        assert_eq!(redact_args(&args(&["-qd=password=secret"]), Some(c)), "-qd=password=********");
        let c = "postgresql://u:secret@h/db";
        assert_eq!(redact_args(&args(&["-d", c]), Some(c)), "-d postgresql://u:********@h/db");
        assert_eq!(redact_args(&args(&["-dpostgresql://u:secret@h/db"]), Some(c)), "-dpostgresql://u:********@h/db");
        // A connection string given without -d is refused, and not shown either.
        assert_eq!(redact_args(&args(&["-m", "password=secret"]), None), "-m password=********");
        assert_eq!(
            redact_args(&args(&["-a", "-i", "/tmp/recover.conf", "-p", "sdw1,sdw2"]), None),
            "-a -i /tmp/recover.conf -p sdw1,sdw2"
        );
        assert_eq!(redact_args(&args(&["-d", ""]), Some("")), "-d ");
    }

    #[test]
    fn hosts_holding_an_at_sign() {
        assert_eq!(redact_host("cdw"), "cdw");
        assert_eq!(redact_host("ss@cdw"), "********@cdw");
        assert_eq!(redact_host("a@b@cdw"), "********@cdw");
    }

    #[test]
    fn library_reasons_keep_only_public_pieces() {
        let shown = r("hots=cdw password=******** port=x");
        assert_eq!(redact_reason("unknown option `hots`", &shown), "unknown option `hots`");
        assert_eq!(redact_reason("invalid value for option `port`", &shown), "invalid value for option `port`");
        assert_eq!(
            redact_reason("unexpected character at byte 9: expected `=` but got `s`", &shown),
            "unexpected character at byte 9: expected `=` but got `********`"
        );
        assert_eq!(redact_reason("unknown option `b&sslmode`", &shown), "unknown option `********`");
        assert_eq!(redact_reason("unterminated `secret", &shown), "unterminated `********");
        assert_eq!(redact_reason("unexpected EOF", &shown), "unexpected EOF");
        assert_eq!(redact_reason("``", ""), "`********`");
    }
}
