//! Cache keys: `host` + path + `?` + normalised query, then the configured extra parts.
//!
//! Only GET responses are stored (HEAD is answered from them), so the method is implicit. The
//! text is what purge takes: `api.example.com/products?page=2` names one resource, and a prefix
//! such as `api.example.com/products` every resource below it, with all their variants.

use http::{HeaderMap, HeaderName};

/// One compiled extra key part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The consumer name (`-` when anonymous).
    Consumer,
    /// A request header's value (empty when absent).
    Header(HeaderName),
}

/// Builds the base key of a request. `ignore` lists query parameter names left out.
pub fn base_key(
    host: &str,
    path: &str,
    query: Option<&str>,
    ignore: &[String],
    parts: &[KeyPart],
    headers: &HeaderMap,
    consumer: Option<&str>,
) -> String {
    let mut key = String::with_capacity(host.len() + path.len() + 16);
    key.push_str(host);
    key.push_str(path);
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        push_query(&mut key, q, ignore);
    }
    for part in parts {
        match part {
            KeyPart::Consumer => {
                key.push_str(" consumer=");
                key.push_str(consumer.unwrap_or("-"));
            }
            KeyPart::Header(name) => {
                key.push(' ');
                key.push_str(name.as_str());
                key.push('=');
                for (i, v) in headers.get_all(name).iter().enumerate() {
                    if i > 0 {
                        key.push(',');
                    }
                    key.push_str(&String::from_utf8_lossy(v.as_bytes()));
                }
            }
        }
    }
    key
}

/// Appends `?` and the query's parameters, sorted, without the ignored ones (and without a `?`
/// when none is left). Sorting makes `?b=2&a=1` and `?a=1&b=2` one entry; parameters are
/// compared as sent (not percent-decoded), and a repeated parameter keeps its relative order.
fn push_query(key: &mut String, query: &str, ignore: &[String]) {
    let mut pairs: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let name = p.split_once('=').map_or(*p, |(n, _)| n);
            !ignore.iter().any(|i| i == name)
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    // Stable: `a=2&a=1` keeps its order (it may mean a list); only different names move.
    pairs.sort_by(|a, b| {
        let na = a.split_once('=').map_or(*a, |(n, _)| n);
        let nb = b.split_once('=').map_or(*b, |(n, _)| n);
        na.cmp(nb)
    });
    key.push('?');
    for (i, p) in pairs.iter().enumerate() {
        if i > 0 {
            key.push('&');
        }
        key.push_str(p);
    }
}

/// The key of one variant of a resource whose responses vary on `names`: the base key, the
/// generation of the resource's vary rule, and the request's values of those headers.
pub fn variant_key(
    base: &str,
    generation: u64,
    names: &[HeaderName],
    headers: &HeaderMap,
) -> String {
    let mut key = String::with_capacity(base.len() + 32);
    key.push_str(base);
    key.push_str(" vary#");
    key.push_str(&generation.to_string());
    for name in names {
        key.push(' ');
        key.push_str(name.as_str());
        key.push('=');
        for (i, v) in headers.get_all(name).iter().enumerate() {
            if i > 0 {
                key.push(',');
            }
            key.push_str(&String::from_utf8_lossy(v.as_bytes()));
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_sorted_and_filtered() {
        let h = HeaderMap::new();
        let ignore = vec!["utm_source".to_string()];
        let k = |q| base_key("api.test", "/p", Some(q), &ignore, &[], &h, None);
        assert_eq!(k("b=2&a=1"), "api.test/p?a=1&b=2");
        assert_eq!(k("a=1&b=2&utm_source=x"), "api.test/p?a=1&b=2");
        assert_eq!(k("utm_source=x"), "api.test/p");
        assert_eq!(k("x=2&x=1&&a"), "api.test/p?a&x=2&x=1");
    }

    #[test]
    fn extra_parts() {
        let mut h = HeaderMap::new();
        h.insert("x-tenant", "acme".parse().unwrap());
        let parts = [
            KeyPart::Header(HeaderName::from_static("x-tenant")),
            KeyPart::Consumer,
        ];
        assert_eq!(
            base_key("h", "/p", None, &[], &parts, &h, Some("alice")),
            "h/p x-tenant=acme consumer=alice"
        );
        assert_eq!(
            variant_key(
                "h/p",
                3,
                &[HeaderName::from_static("accept-encoding")],
                &HeaderMap::new()
            ),
            "h/p vary#3 accept-encoding="
        );
    }
}
