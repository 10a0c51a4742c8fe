//! A tenant gate written with the Rust proxy-wasm SDK: requests without the configured tenant
//! header are refused with the filter's own reply; the others go on with `x-rust-tenant` and
//! `x-rust-path` (read from the `:path` pseudo-header) added, and their answer gets
//! `x-rust-filter: seen` and `x-rust-status` (read from the `response.code` property).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { header: String::new() })
    });
}}

struct Root {
    header: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.header = self
            .get_plugin_configuration()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "x-tenant".into());
        true
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Gate {
            context_id,
            header: self.header.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Gate {
    context_id: u32,
    header: String,
}

impl Context for Gate {}

impl HttpContext for Gate {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let Some(tenant) = self.get_http_request_header(&self.header) else {
            self.send_http_response(403, vec![("x-refused-by", "rust-sdk")], Some(b"no tenant\n"));
            return Action::Pause;
        };
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.set_http_request_header("x-rust-tenant", Some(&tenant));
        self.add_http_request_header("x-rust-path", &path);
        log::info!("context {}: tenant {tenant}", self.context_id);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-rust-filter", Some("seen"));
        // Integers are 8 little-endian bytes, as Envoy gives them.
        if let Some(code) = self
            .get_property(vec!["response", "code"])
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        {
            let status = u64::from_le_bytes(code).to_string();
            self.set_http_response_header("x-rust-status", Some(&status));
        }
        Action::Continue
    }
}
