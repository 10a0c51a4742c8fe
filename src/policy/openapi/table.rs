//! The spec's path templates as a lookup table: a request path to its operation and the
//! values of the template's variables.
//!
//! Templates are grouped by segment count; within a group the most specific match wins (a
//! literal segment beats a variable at the first place they differ, as OpenAPI asks:
//! `/pets/mine` before `/pets/{id}`). A variable may share its segment with literal text
//! (`/files/{name}.json`).

use http::Method;

/// What a request path and method are in the spec.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// Operation index, and the template variables (names, raw values percent-decoded).
    Found(usize, Vec<(&'a str, String)>),
    /// No template matches the path.
    NoPath,
    /// A template matches but has no operation for the method: the `Allow` value.
    NoMethod(String),
}

#[derive(Debug)]
enum Seg {
    Lit(String),
    Var {
        prefix: String,
        name: String,
        suffix: String,
    },
}

#[derive(Debug)]
struct Template {
    segs: Vec<Seg>,
    /// Operation index by method.
    ops: Vec<(Method, usize)>,
}

/// The lookup table.
#[derive(Debug, Default)]
pub struct Table {
    /// Templates by segment count.
    by_len: Vec<Vec<Template>>,
}

impl Table {
    /// The table of `(path template, method)` pairs, operation `i` being the `i`th pair.
    pub fn new<'a>(ops: impl Iterator<Item = (&'a str, &'a Method)>) -> Self {
        let mut t = Table::default();
        for (i, (path, method)) in ops.enumerate() {
            let segs: Vec<Seg> = path.split('/').skip(1).map(parse_seg).collect();
            let n = segs.len();
            if t.by_len.len() <= n {
                t.by_len.resize_with(n + 1, Vec::new);
            }
            let group = &mut t.by_len[n];
            match group.iter_mut().find(|tpl| same(&tpl.segs, &segs)) {
                Some(tpl) => tpl.ops.push((method.clone(), i)),
                None => group.push(Template {
                    segs,
                    ops: vec![(method.clone(), i)],
                }),
            }
        }
        t
    }

    /// Looks `method path` up. Allocates only for the variables' values.
    pub fn find<'a>(&'a self, method: &Method, path: &str) -> Lookup<'a> {
        let n = path.split('/').count() - 1;
        let Some(group) = self.by_len.get(n) else {
            return Lookup::NoPath;
        };
        let mut best: Option<(&Template, u64)> = None;
        for tpl in group {
            let Some(score) = score(&tpl.segs, path) else {
                continue;
            };
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((tpl, score));
            }
        }
        let Some((tpl, _)) = best else {
            return Lookup::NoPath;
        };
        let found = tpl.ops.iter().find(|(m, _)| m == method).or_else(|| {
            // HEAD is answered like GET where the spec does not describe it.
            (method == Method::HEAD)
                .then(|| tpl.ops.iter().find(|(m, _)| m == Method::GET))
                .flatten()
        });
        let Some((_, index)) = found else {
            let allow: Vec<&str> = tpl.ops.iter().map(|(m, _)| m.as_str()).collect();
            return Lookup::NoMethod(allow.join(", "));
        };
        let mut vars = Vec::new();
        for (seg, part) in tpl.segs.iter().zip(path.split('/').skip(1)) {
            if let Seg::Var {
                prefix,
                name,
                suffix,
            } = seg
            {
                let raw = &part[prefix.len()..part.len() - suffix.len()];
                vars.push((name.as_str(), crate::openapi::percent_decode(raw)));
            }
        }
        Lookup::Found(*index, vars)
    }
}

fn parse_seg(s: &str) -> Seg {
    match (s.find('{'), s.rfind('}')) {
        (Some(open), Some(close)) if open < close => Seg::Var {
            prefix: s[..open].to_string(),
            name: s[open + 1..close].to_string(),
            suffix: s[close + 1..].to_string(),
        },
        _ => Seg::Lit(s.to_string()),
    }
}

fn same(a: &[Seg], b: &[Seg]) -> bool {
    a.iter().zip(b).all(|(x, y)| match (x, y) {
        (Seg::Lit(x), Seg::Lit(y)) => x == y,
        (
            Seg::Var {
                prefix: p1,
                suffix: s1,
                ..
            },
            Seg::Var {
                prefix: p2,
                suffix: s2,
                ..
            },
        ) => p1 == p2 && s1 == s2,
        _ => false,
    })
}

/// `None` when the template does not match `path`; else a score where literal segments earlier
/// in the path weigh more.
fn score(segs: &[Seg], path: &str) -> Option<u64> {
    let mut score = 0u64;
    for (i, (seg, part)) in segs.iter().zip(path.split('/').skip(1)).enumerate() {
        let bit = 1u64 << (63 - i.min(63));
        match seg {
            Seg::Lit(l) => {
                if l != part {
                    return None;
                }
                score |= bit;
            }
            Seg::Var { prefix, suffix, .. } => {
                // Most variables fill their segment: no comparison for an empty prefix or
                // suffix (a `memcmp` call each, most of the lookup's time in the profile).
                if part.len() < prefix.len() + suffix.len() + 1
                    || (!prefix.is_empty() && !part.starts_with(prefix.as_str()))
                    || (!suffix.is_empty() && !part.ends_with(suffix.as_str()))
                {
                    return None;
                }
            }
        }
    }
    Some(score)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let ops = [
            ("/pets", Method::GET),
            ("/pets", Method::POST),
            ("/pets/{id}", Method::GET),
            ("/pets/mine", Method::GET),
            ("/files/{name}.json", Method::GET),
        ];
        Table::new(ops.iter().map(|(p, m)| (*p, m)))
    }

    #[test]
    fn literal_segments_win_and_variables_are_decoded() {
        let t = table();
        assert!(matches!(
            t.find(&Method::GET, "/pets/mine"),
            Lookup::Found(3, _)
        ));
        match t.find(&Method::GET, "/pets/a%20b") {
            Lookup::Found(2, vars) => assert_eq!(vars, vec![("id", "a b".to_string())]),
            other => panic!("{other:?}"),
        }
        match t.find(&Method::GET, "/files/x.json") {
            Lookup::Found(4, vars) => assert_eq!(vars, vec![("name", "x".to_string())]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_paths_and_methods() {
        let t = table();
        assert!(matches!(t.find(&Method::GET, "/cats"), Lookup::NoPath));
        assert!(matches!(t.find(&Method::GET, "/pets/"), Lookup::NoPath));
        match t.find(&Method::DELETE, "/pets") {
            Lookup::NoMethod(allow) => assert_eq!(allow, "GET, POST"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.find(&Method::HEAD, "/pets"),
            Lookup::Found(0, _)
        ));
    }
}
