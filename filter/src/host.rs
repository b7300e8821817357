//! The host calls the filter makes, without the SDK's panics.
//!
//! proxy-wasm 0.2.5's wrappers `panic!` on any status they do not expect (Envoy answers
//! `BadArgument` when a header map is touched in the wrong phase, e.g. once headers have
//! gone on) and `unwrap` the UTF-8 of every header value (a client can send any byte).
//! They also declare the status as a Rust enum, so a status the SDK does not know would
//! be undefined behaviour. A panic kills the VM for every request on that worker, so the
//! calls on the request path go straight to the ABI here and return `Result`.
//!
//! gRPC callouts still use the SDK (`proxy_wasm::hostcalls::dispatch_grpc_call`), because
//! its dispatcher must register the token to route the answer back to the root context.

#![allow(unsafe_code)]

use std::ptr::{null, null_mut};

use crate::abi;

/// A non-OK status from the host (the proxy-wasm `WasmResult` code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

pub mod map {
    pub const REQUEST_HEADERS: u32 = 0;
    pub const RESPONSE_HEADERS: u32 = 2;
}

pub mod buffer {
    pub const REQUEST_BODY: u32 = 0;
    pub const RESPONSE_BODY: u32 = 1;
    pub const PLUGIN_CONFIGURATION: u32 = 7;
}

pub mod stream {
    pub const HTTP_RESPONSE: u32 = 1;
}

pub mod metric {
    pub const COUNTER: u32 = 0;
}

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_set_buffer_bytes(buffer_type: u32, start: usize, size: usize, data: *const u8, data_size: usize) -> u32;
    fn proxy_close_stream(stream_type: u32) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details_data: *const u8,
        details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *mut *mut u8,
        value_size: *mut usize,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_get_log_level(level: *mut u32) -> u32;
    fn proxy_get_status(code: *mut u32, message_data: *mut *mut u8, message_size: *mut usize) -> u32;
}

fn check(status: u32) -> Result<(), Status> {
    if status == OK { Ok(()) } else { Err(Status(status)) }
}

/// Takes ownership of memory the host filled. The host allocates it through the SDK's
/// exported `proxy_on_memory_allocate`, which hands out a boxed `[u8]` of exactly `size`.
fn take_host_bytes(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: `data` came from `proxy_on_memory_allocate(size)` (a leaked `Box<[u8]>` of
    // length `size`), the host wrote `size` bytes to it, and nothing else owns it.
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// All headers of a map. Values are bytes: a client may send anything.
pub fn header_pairs(map_type: u32) -> Result<Vec<(String, Vec<u8>)>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: the out-pointers are valid for writes for the duration of the call.
    check(unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) })?;
    let bytes = take_host_bytes(data, size).unwrap_or_default();
    abi::deserialize_map(&bytes).ok_or(Status(u32::MAX))
}

/// Sets a header, replacing any value it had.
pub fn set_header(map_type: u32, name: &str, value: &str) -> Result<(), Status> {
    // SAFETY: both slices are valid for reads of their lengths during the call.
    check(unsafe { proxy_replace_header_map_value(map_type, name.as_ptr(), name.len(), value.as_ptr(), value.len()) })
}

/// Removes a header (every value of it).
pub fn remove_header(map_type: u32, name: &str) -> Result<(), Status> {
    // SAFETY: `name` is valid for reads of its length during the call.
    check(unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) })
}

/// Bytes `start..start + max_size` of a buffer (`Ok(empty)` if there is none).
pub fn buffer(buffer_type: u32, start: usize, max_size: usize) -> Result<Vec<u8>, Status> {
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: out-pointers are valid for writes for the duration of the call.
    let status = unsafe { proxy_get_buffer_bytes(buffer_type, start, max_size, &mut data, &mut size) };
    match status {
        OK => Ok(take_host_bytes(data, size).unwrap_or_default()),
        NOT_FOUND => Ok(Vec::new()),
        other => Err(Status(other)),
    }
}

/// Replaces bytes `start..start + size` of a buffer with `data` (`start` 0 and `size` the
/// whole buffer replace all of it).
pub fn set_buffer(buffer_type: u32, start: usize, size: usize, data: &[u8]) -> Result<(), Status> {
    // SAFETY: `data` is valid for reads of its length during the call.
    check(unsafe { proxy_set_buffer_bytes(buffer_type, start, size, data.as_ptr(), data.len()) })
}

/// Resets a stream (Envoy: the response is reset, the client sees the stream end with an
/// error): the last resort when an answer must not go on and cannot be replaced.
pub fn close_stream(stream_type: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_close_stream(stream_type) })
}

/// Lets a paused stream go on (Envoy: continue encoding what the filter held).
pub fn continue_stream(stream_type: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_continue_stream(stream_type) })
}

/// Makes later host calls of this callback act on `context_id` (the root resuming a stream).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_effective_context(context_id) })
}

/// Answers the request locally (Envoy's local reply); `details` shows up as the
/// response code details in access logs.
pub fn send_local_response(
    status_code: u32,
    details: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> Result<(), Status> {
    let headers = abi::serialize_map(headers);
    // SAFETY: all slices are valid for reads of their lengths during the call.
    check(unsafe {
        proxy_send_local_response(
            status_code,
            details.as_ptr(),
            details.len(),
            if body.is_empty() { null() } else { body.as_ptr() },
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    })
}

/// A property of the stream or the plugin (`["plugin_name"]`), `Ok(None)` if unset.
pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let path = abi::serialize_path(path);
    let (mut data, mut size) = (null_mut(), 0);
    // SAFETY: `path` is valid for reads; out-pointers valid for writes during the call.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    match status {
        OK => Ok(take_host_bytes(data, size)),
        NOT_FOUND => Ok(None),
        other => Err(Status(other)),
    }
}

/// The host's wall clock in milliseconds since the Unix epoch (0 if unavailable).
pub fn now_ms() -> u64 {
    now_nanos() / 1_000_000
}

/// The host's wall clock in nanoseconds since the Unix epoch (0 if unavailable).
pub fn now_nanos() -> u64 {
    let mut nanos = 0;
    // SAFETY: the out-pointer is valid for writes for the duration of the call.
    match check(unsafe { proxy_get_current_time_nanoseconds(&mut nanos) }) {
        Ok(()) => nanos,
        Err(_) => 0,
    }
}

pub fn set_tick_period_ms(period: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    check(unsafe { proxy_set_tick_period_milliseconds(period) })
}

pub fn define_counter(name: &str) -> Result<u32, Status> {
    let mut id = 0;
    // SAFETY: `name` is valid for reads; the out-pointer valid for writes during the call.
    check(unsafe { proxy_define_metric(metric::COUNTER, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment(metric_id: u32, by: u64) -> Result<(), Status> {
    let by = i64::try_from(by).unwrap_or(i64::MAX);
    // SAFETY: no pointers.
    check(unsafe { proxy_increment_metric(metric_id, by) })
}

/// The host's log level for this plugin, in the SDK's numbering (0 trace .. 5 critical).
pub fn log_level() -> Option<u32> {
    let mut level = 0;
    // SAFETY: the out-pointer is valid for writes for the duration of the call.
    check(unsafe { proxy_get_log_level(&mut level) }).ok().map(|()| level)
}

/// The status message of the gRPC call being answered (inside its callback).
pub fn grpc_status_message() -> Option<String> {
    let (mut code, mut data, mut size) = (0, null_mut(), 0);
    // SAFETY: out-pointers are valid for writes for the duration of the call.
    check(unsafe { proxy_get_status(&mut code, &mut data, &mut size) }).ok()?;
    take_host_bytes(data, size).map(|m| String::from_utf8_lossy(&m).into_owned())
}
