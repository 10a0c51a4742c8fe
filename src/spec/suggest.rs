//! "Did you mean ...?" for names the config does not know: unknown keys, policy names and
//! enum-like values (load-balancing algorithms, `retry_on` conditions, log levels...).
//!
//! Owns the edit distance and the wording; which names are allowed is the caller's (serde's
//! own "expected one of" list, or a check's list of values).

/// The furthest (in single-character edits) a known name may be from the written one to be
/// suggested.
pub const MAX_DISTANCE: usize = 2;

/// Levenshtein distance between `a` and `b`, ignoring ASCII case.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The known name closest to `written`, when it is at most [`MAX_DISTANCE`] edits away and
/// closer than the word's own length (so `x` does not suggest `id`). The first wins a tie.
pub fn closest<'k>(written: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    let limit = MAX_DISTANCE.min(written.chars().count().saturating_sub(1));
    known
        .into_iter()
        .map(|k| (edit_distance(written, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// ` (did you mean `name`?)` when a known name is close to `written`, else nothing.
pub fn did_you_mean<'k>(written: &str, known: impl IntoIterator<Item = &'k str>) -> String {
    closest(written, known)
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

/// `unknown <what> `written` (did you mean ...?), expected one of `a`, `b``: the one line a
/// check reports for a name outside `known`.
pub fn unknown(what: &str, written: &str, known: &[&str]) -> String {
    let list: Vec<String> = known.iter().map(|k| format!("`{k}`")).collect();
    format!(
        "unknown {what} `{written}`{}, expected one of {}",
        did_you_mean(written, known.iter().copied()),
        list.join(", ")
    )
}

/// Serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant ..."), with a
/// suggestion added when one of the expected names is close; a variant is called a value, or a
/// policy where it names one.
/// Other messages are returned unchanged.
pub fn serde_message(message: String, path: &str) -> String {
    for kind in ["field", "variant"] {
        let Some(rest) = message.strip_prefix(&format!("unknown {kind} `")) else {
            continue;
        };
        let Some((written, expected)) = rest.split_once('`') else {
            return message;
        };
        let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        // A "variant" is serde's word: to the operator it is a value, or a policy name in
        // `policies: [{rate_limt: ...}]`.
        let what = match kind {
            "variant" if is_policy_entry(path, written) => "policy",
            "variant" => "value",
            _ => kind,
        };
        return format!(
            "unknown {what} `{written}`{}{expected}",
            did_you_mean(written, known)
        );
    }
    message
}

/// Whether `path` is `...policies[N].name`.
fn is_policy_entry(path: &str, name: &str) -> bool {
    path.strip_suffix(name)
        .and_then(|p| p.strip_suffix('.'))
        .and_then(|p| p.strip_suffix(']'))
        .and_then(|p| p.rsplit_once('['))
        .is_some_and(|(list, _)| list == "policies" || list.ends_with(".policies"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_counts_single_character_edits_ignoring_case() {
        assert_eq!(edit_distance("rate_limit", "rate_limit"), 0);
        assert_eq!(edit_distance("rate_limt", "rate_limit"), 1);
        assert_eq!(edit_distance("Hosts", "hostz"), 1);
        assert_eq!(edit_distance("wieght", "weight"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn only_close_names_are_suggested() {
        let known = ["auth", "rate_limit", "cache", "cors"];
        assert_eq!(closest("rate_limt", known), Some("rate_limit"));
        assert_eq!(closest("wasm", known), None);
        assert_eq!(closest("x", ["id"]), None);
        assert_eq!(did_you_mean("cahce", known), " (did you mean `cache`?)");
        assert_eq!(did_you_mean("wasm", known), "");
    }

    #[test]
    fn serde_messages_get_a_suggestion_and_policies_their_name() {
        assert_eq!(
            serde_message(
                "unknown field `hostz`, expected one of `hosts`, `path`".into(),
                "routes[0].match.hostz"
            ),
            "unknown field `hostz` (did you mean `hosts`?), expected one of `hosts`, `path`"
        );
        assert_eq!(
            serde_message(
                "unknown variant `rate_limt`, expected one of `auth`, `rate_limit`".into(),
                "routes[0].policies[1].rate_limt"
            ),
            "unknown policy `rate_limt` (did you mean `rate_limit`?), expected one of `auth`, `rate_limit`"
        );
        assert_eq!(
            serde_message(
                "unknown variant `wasm`, expected `a` or `b`".into(),
                "policies[0].wasm"
            ),
            "unknown policy `wasm`, expected `a` or `b`"
        );
        assert_eq!(
            serde_message(
                "unknown variant `jsn`, expected `json` or `common`".into(),
                "access_log.format"
            ),
            "unknown value `jsn` (did you mean `json`?), expected `json` or `common`"
        );
        assert_eq!(
            serde_message("missing field `x`".into(), ""),
            "missing field `x`"
        );
    }

    #[test]
    fn unknown_names_one_line_with_the_allowed_values() {
        assert_eq!(
            unknown("log level", "inf", &["error", "info"]),
            "unknown log level `inf` (did you mean `info`?), expected one of `error`, `info`"
        );
    }
}
