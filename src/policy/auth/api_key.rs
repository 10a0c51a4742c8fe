//! API keys from a header or a query parameter. The lookup (hash, O(1), constant-time compare)
//! is the registry's; this file finds the key in the request and removes it before the request
//! goes upstream, unless configured to forward it.

use http::request::Parts;
use http::{HeaderName, Uri};

use super::config::RawApiKeySettings;
use crate::spec::ConfigError;

/// Where API keys are read from.
#[derive(Debug)]
pub struct ApiKeyAuth {
    header: HeaderName,
    query: Option<String>,
    forward: bool,
}

impl ApiKeyAuth {
    /// From the `auth.api_key` settings.
    pub fn build(raw: &RawApiKeySettings, path: &str, errors: &mut Vec<ConfigError>) -> Self {
        let header = HeaderName::from_bytes(raw.header.as_bytes()).unwrap_or_else(|_| {
            errors.push(ConfigError::new(
                format!("{path}.header"),
                format!("`{}` is not a valid header name", raw.header),
            ));
            HeaderName::from_static("x-api-key")
        });
        Self {
            header,
            query: raw.query.clone(),
            forward: raw.forward,
        }
    }

    /// The key presented by the request, removed from it unless `forward` is set.
    pub fn take(&self, parts: &mut Parts) -> Option<String> {
        if let Some(v) = parts.headers.get(&self.header) {
            let key = match std::str::from_utf8(v.as_bytes()) {
                Ok(text) => text.trim().to_string(),
                Err(_) => String::from_utf8_lossy(v.as_bytes()).trim().to_string(),
            };
            if !self.forward {
                parts.headers.remove(&self.header);
            }
            return Some(key);
        }
        let param = self.query.as_deref()?;
        let query = parts.uri.query()?;
        // Other parameters are kept byte for byte (decoding and re-encoding them would change
        // e.g. `a=x,y` into `a=x%2Cy`, which a signature or a strict upstream may reject).
        let mut key = None;
        let mut kept: Vec<&str> = Vec::new();
        for piece in query.split('&') {
            let decoded = form_urlencoded::parse(piece.as_bytes()).next();
            match decoded {
                Some((k, v)) if k == param && key.is_none() => key = Some(v.into_owned()),
                _ if piece.is_empty() => {}
                _ => kept.push(piece),
            }
        }
        let key = key?;
        if !self.forward {
            let kept = kept.join("&");
            let path = parts.uri.path();
            let pq = if kept.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{kept}")
            };
            let mut uri = parts.uri.clone().into_parts();
            uri.path_and_query = pq.parse().ok();
            if let Ok(new) = Uri::from_parts(uri) {
                parts.uri = new;
            }
        }
        Some(key)
    }
}
