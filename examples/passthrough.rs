//! A minimal pingora pass-through proxy built with provgate's own server settings
//! (`server::server_conf`, the same upstream peer, the same allocator): the baseline the
//! load benchmark compares provgate against, so the difference is the checks alone.
//!
//! `cargo run --release --example passthrough -- CONFIG.toml` (reads `listen`, `upstream`,
//! `server` and the rest of a provgate config; enforces nothing).

// Tests, benchmarks and examples may panic: Cargo.toml's no-panic lints are for the product.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::unimplemented
)]
#![forbid(unsafe_code)]

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::Server;
use provgate::proxy::Gate;

struct PassThrough {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();
    fn new_ctx(&self) {}

    // The same module set as provgate's: none.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "config/provgate.toml".into());
    let config = match provgate::config::load(std::path::Path::new(&path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("passthrough: {path}: {e}");
            std::process::exit(1);
        }
    };
    let mut server = Server::new_with_opt_and_conf(None, provgate::server::server_conf(&config));
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        PassThrough {
            peer: Gate::upstream_peer_for(&config.upstream),
        },
    );
    proxy.add_tcp(&config.listen.address.to_string());
    server.add_service(proxy);
    server.run_forever()
}
