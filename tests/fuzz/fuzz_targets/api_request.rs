//! Requests on the API socket: the first byte picks the method, the bytes up to the first
//! newline are the path, the rest is the body. A parsed `vm.create` is also checked as
//! `vm.create` checks it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmm::api::request::{parse, ApiRequest, Method};

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = if m & 1 == 0 { Method::Get } else { Method::Put };
    let (path, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = std::str::from_utf8(path) else {
        return;
    };
    if let Ok(ApiRequest::VmCreate(cfg)) = parse(method, path, body) {
        let _ = cfg.to_config("fuzz");
    }
});
