//! The checkpoint on callback paths: read the body (bounded in size and time), judge it, then
//! either answer in Click's format or forward the exact original bytes with the trust header.
//!
//! Transport failures are not Click errors: a body that never finishes arriving gets a plain
//! `408`, so Click sees "no answer" and retries, exactly as it would if the merchant's server
//! had timed out. Only the content of a callback earns a Click error code.

use std::net::IpAddr;
use std::time::Instant;

use http::{header, HeaderValue, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::click::{self, Echo, Form, FormKind, RejectReason, MAX_CALLBACK_BODY};
use crate::gateway::{body_failure, Gateway, Peer};
use crate::proxy::body::{read_bounded, BodyError};
use crate::proxy::{self, headers, ProxyBody};
use crate::runtime::Runtime;

/// Handles a request to a callback path.
pub async fn callback(
    gw: &Gateway,
    runtime: &Runtime,
    peer: Peer,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let client = headers::client_ip(req.headers(), peer.addr.ip(), &gw.trusted_proxies);
    let kind = match precheck(&req) {
        Ok(kind) => kind,
        Err(reason) => {
            let resp = reject(peer, client, runtime, &reason, &Echo::default(), None);
            // The body was not read: do not try to find the next request after it.
            return match reason {
                RejectReason::BodyTooLarge => proxy::closing(resp),
                _ => resp,
            };
        }
    };
    let (parts, body) = req.into_parts();
    let body = match read_bounded(body, MAX_CALLBACK_BODY, gw.body_read_timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge(_)) => {
            let reason = RejectReason::BodyTooLarge;
            return proxy::closing(reject(
                peer,
                client,
                runtime,
                &reason,
                &Echo::default(),
                None,
            ));
        }
        // Transport failures are not Click errors: Click sees no answer and retries.
        Err(e) => return body_failure(peer, &parts, &e),
    };

    let form = match Form::parse(&kind, &body) {
        Ok(form) => form,
        Err(e) => {
            return reject(
                peer,
                client,
                runtime,
                &RejectReason::Form(e),
                &Echo::default(),
                None,
            )
        }
    };
    let verdict = click::judge(&form, &runtime.keys);
    let verified = match verdict.outcome {
        Ok(v) => v,
        Err(reason) => {
            return reject(
                peer,
                client,
                runtime,
                &reason,
                &verdict.echo,
                verdict.callback.as_ref(),
            )
        }
    };
    let action = verdict.callback.as_ref().map(|c| c.action.as_str());
    let click_trans_id = verdict.echo.click_trans_id;
    let checked = started.elapsed();

    let resp = gw
        .forward(peer, parts, body, Some(verified.service_id))
        .await;
    tracing::info!(
        peer = %peer.addr,
        client = %client,
        service_id = verified.service_id,
        click_trans_id,
        action,
        slot = verified.slot,
        fp = %verified.fingerprint,
        generation = runtime.generation,
        status = resp.status().as_u16(),
        verify_us = checked.as_micros() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "callback verified and forwarded"
    );
    resp
}

/// What can be refused from the headers alone, before reading any body.
fn precheck(req: &Request<Incoming>) -> Result<FormKind, RejectReason> {
    if req.method() != Method::POST {
        return Err(RejectReason::MethodNotAllowed);
    }
    let headers = req.headers();
    if headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(RejectReason::ContentEncoding);
    }
    let mut types = headers.get_all(header::CONTENT_TYPE).iter();
    let kind = match (types.next(), types.next()) {
        (Some(ct), None) => ct
            .to_str()
            .map_err(|_| "content-type is not ASCII")
            .and_then(FormKind::from_content_type),
        (None, _) => Err("no content-type: the body is not a form"),
        (Some(_), Some(_)) => Err("more than one content-type"),
    }
    .map_err(RejectReason::ContentType)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_CALLBACK_BODY as u64) {
        return Err(RejectReason::BodyTooLarge);
    }
    Ok(kind)
}

/// Answers a refused callback the way the merchant's server would, and logs why.
fn reject(
    peer: Peer,
    client: IpAddr,
    runtime: &Runtime,
    reason: &RejectReason,
    echo: &Echo<'_>,
    cb: Option<&click::Callback<'_>>,
) -> Response<ProxyBody> {
    let error = reason.click_error();
    let hint = match reason {
        RejectReason::Signature(d) => d.hint_label(),
        _ => None,
    };
    // A genuine signature in a log is material for guessing the key offline: 8 characters.
    let sign_prefix = cb.map(|c| c.sign_string.get(..8).unwrap_or(c.sign_string));
    tracing::warn!(
        peer = %peer.addr,
        client = %client,
        error = error.code(),
        reason = reason.label(),
        hint,
        service_id = cb.map(|c| c.service_id),
        click_trans_id = echo.click_trans_id,
        merchant_trans_id = echo.merchant_trans_id.map(tracing::field::debug),
        action = cb.map(|c| c.action.as_str()),
        sign_string = sign_prefix.map(tracing::field::debug),
        generation = runtime.generation,
        "callback rejected: {reason}"
    );
    let body = click::respond::error_body(error, echo);
    let mut resp = Response::new(Either::Right(Full::new(body)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
