//! Property tests for the code that judges untrusted input: the settings
//! parser, the webhook signature check and the path rules of materialize.
//! Each property runs a fixed number of cases, so CI time stays bounded.

mod support;

use ::gitreload::http::authorized;
use ::gitreload::materialize::{check_link, checked_path, is_hidden};
use ::gitreload::settings::{Settings, VARIABLES};
use proptest::prelude::*;
use support::webhook_signature;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One path component and whether it is a plain name the destination
/// filesystem holds (the oracle for `checked_path`, stated independently).
fn path_component() -> impl Strategy<Value = (Vec<u8>, bool)> {
    let plain = |s: String| (s.into_bytes(), true);
    let bad = |s: String| (s.into_bytes(), false);
    prop_oneof![
        8 => "[a-zA-Z0-9_-][a-zA-Z0-9_.-]{0,30}".prop_map(plain),
        2 => "\\.[a-z0-9_-][a-z0-9_.-]{0,7}".prop_map(plain),
        1 => "\\.\\.[a-z0-9.]{1,4}".prop_map(plain),
        2 => "[äöüß日本é][a-z]{0,6}".prop_map(plain),
        1 => Just("x".repeat(255)).prop_map(plain),
        1 => Just(String::new()).prop_map(bad),
        1 => Just(".".to_string()).prop_map(bad),
        1 => Just("..".to_string()).prop_map(bad),
        1 => "[a-z]{0,3}\\x00[a-z]{0,3}".prop_map(bad),
        1 => (256usize..300).prop_map(move |n| bad("y".repeat(n))),
        // A lone continuation byte: never valid UTF-8.
        1 => ("[a-z]{0,3}", 0x80u8..0xC0, "[a-z]{0,3}").prop_map(|(a, b, c)| {
            let mut bytes = a.into_bytes();
            bytes.push(b);
            bytes.extend(c.into_bytes());
            (bytes, false)
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Any value of any variable: no panic, and an error names a variable
    /// and never echoes the webhook secret.
    #[test]
    fn settings_errors_name_the_variable_and_hide_secrets(
        index in 0..VARIABLES.len(),
        value in ".{0,40}",
        secret in "[a-zA-Z0-9]{12,20}",
    ) {
        let name = format!("GITRELOAD_{}", VARIABLES[index]);
        let mut vars = vec![
            ("GITRELOAD_REPO".to_string(), "https://git.example.test/cfg.git".to_string()),
            ("GITRELOAD_DEST".to_string(), "/srv/config".to_string()),
            ("GITRELOAD_STATE_DIR".to_string(), "/var/lib/gitreload-test".to_string()),
            ("GITRELOAD_WEBHOOK_SECRET".to_string(), secret.clone()),
        ];
        vars.retain(|(k, _)| *k != name);
        vars.push((name.clone(), value));
        if let Err(e) = Settings::from_vars(vars) {
            let text = e.to_string();
            prop_assert!(text.starts_with("GITRELOAD_"), "{}", text);
            prop_assert!(!text.contains(&secret), "secret in {}", text);
            prop_assert!(!text.contains('\n'), "one line expected: {}", text);
        }
    }

    /// A correct HMAC is accepted; any other signature or token is not.
    #[test]
    fn webhook_signature_accepts_exactly_the_right_hmac(
        secret in proptest::collection::vec(any::<u8>(), 1..64),
        body in proptest::collection::vec(any::<u8>(), 0..256),
        flip in any::<usize>(),
        token in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let good = webhook_signature(&secret, &body);
        prop_assert!(authorized(&secret, &body, Some(&good), None));
        prop_assert!(authorized(&secret, &body, None, Some(&secret)));
        prop_assert!(!authorized(&secret, &body, None, None));
        if !body.is_empty() {
            let mut tampered = body.clone();
            let i = flip % tampered.len();
            tampered[i] ^= 0x01;
            prop_assert!(!authorized(&secret, &tampered, Some(&good), None));
        }
        let mut bad_sig = good.clone().into_bytes();
        let i = 7 + flip % (bad_sig.len() - 7);
        bad_sig[i] = if bad_sig[i] == b'0' { b'1' } else { b'0' };
        prop_assert!(!authorized(&secret, &body, Some(std::str::from_utf8(&bad_sig).unwrap()), None));
        if token != secret {
            prop_assert!(!authorized(&secret, &body, None, Some(&token)));
        }
    }

    /// Accepted tree paths are plain relative names the filesystem holds:
    /// path-like names built from plain components are accepted as they
    /// are, and one bad component (empty, `.`, `..`, a NUL, longer than 255
    /// bytes, broken UTF-8) anywhere gets the whole path refused.
    #[test]
    fn accepted_paths_are_plain_relative_names(
        parts in proptest::collection::vec(path_component(), 1..6),
    ) {
        let path: Vec<u8> = parts
            .iter()
            .map(|(bytes, _)| bytes.clone())
            .collect::<Vec<_>>()
            .join(&b'/');
        let plain = parts.iter().all(|(_, plain)| *plain);
        let result = checked_path(&path);
        prop_assert_eq!(result.is_ok(), plain, "{:?} -> {:?}", String::from_utf8_lossy(&path), result);
        if let Ok(text) = result {
            prop_assert_eq!(text.as_bytes(), &path[..]);
            prop_assert!(!text.starts_with('/'));
            for c in text.split('/') {
                prop_assert!(!c.is_empty() && c != "." && c != "..");
                prop_assert!(c.len() <= 255 && !c.contains('\0'));
            }
        }
    }

    /// An accepted symlink never leaves the tree, even when any name on its
    /// way is itself a link to "." (the physical walk can only be deeper
    /// than the lexical one, never shallower).
    #[test]
    fn accepted_symlinks_never_leave_the_tree(
        dir in proptest::collection::vec(prop_oneof!["a", "b"], 0..4),
        target in proptest::collection::vec(prop_oneof!["a", "b", "..", ".", ""], 0..8),
        absolute in any::<bool>(),
    ) {
        let mut link = dir.join("/");
        if !link.is_empty() {
            link.push('/');
        }
        link.push_str("link");
        let mut target_text = target.join("/");
        if absolute {
            target_text.insert(0, '/');
        }
        if check_link(&link, &target_text).is_ok() {
            prop_assert!(!absolute);
            // Worst case: every name is a link to ".", so only `..` moves,
            // always upwards from the link's directory.
            let mut depth = dir.len() as i64;
            for c in target_text.split('/') {
                if c == ".." {
                    depth -= 1;
                }
                prop_assert!(depth >= 0, "{} -> {} escapes", link, target_text);
            }
        }
    }

    /// Hidden means some component starts with a dot, nothing else. The
    /// oracle reads the text as a whole: a dot at the very start or right
    /// after a slash.
    #[test]
    fn hidden_is_a_leading_dot_in_any_component(parts in proptest::collection::vec("[.a-z]{1,5}", 1..5)) {
        let path = parts.join("/");
        let leading_dot = path.starts_with('.') || path.contains("/.");
        prop_assert_eq!(is_hidden(&path), leading_dot, "{}", path);
    }
}

#[test]
fn hidden_paths_by_example() {
    for hidden in [
        ".git",
        ".github/workflows/ci.yml",
        "rules/.hidden.yml",
        "a/.b/c",
        "./x",
    ] {
        assert!(is_hidden(hidden), "{hidden}");
    }
    for shown in ["prometheus.yml", "rules/a.yml", "a.b/c.d", "x./y", "a/b."] {
        assert!(!is_hidden(shown), "{shown}");
    }
}
