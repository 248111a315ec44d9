//! The bearer token: checked by the coordinator on every RPC (health excepted, for probes), attached by
//! clients and workers.

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// Client side: adds `authorization: Bearer <token>` when a token is configured.
#[derive(Clone, Debug)]
pub struct AttachToken(Option<MetadataValue<tonic::metadata::Ascii>>);

impl AttachToken {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.and_then(|t| format!("Bearer {t}").parse().ok()))
    }
}

impl tonic::service::Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Server side: rejects calls without the configured token with UNAUTHENTICATED.
#[derive(Clone, Debug)]
pub struct CheckToken(Option<std::sync::Arc<[u8]>>);

impl CheckToken {
    /// `None`: every call is let through.
    pub fn new(token: Option<&str>) -> Self {
        Self(token.map(|t| t.as_bytes().into()))
    }
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(want) = &self.0 else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match got {
            Some(got) if constant_time_eq(got.as_bytes(), want) => Ok(req),
            Some(_) => Err(Status::unauthenticated(
                "wrong token: pass the coordinator's token with --token or DISTILL_TOKEN",
            )),
            None => Err(Status::unauthenticated(
                "this coordinator requires a token: pass it with --token or DISTILL_TOKEN (metadata `authorization: Bearer <token>`)",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    #[test]
    fn the_token_is_required_and_checked() {
        let mut check = CheckToken::new(Some("s3cret"));
        let mut with = |t: Option<&str>| {
            let mut req = Request::new(());
            AttachToken::new(t).call(Request::new(())).unwrap();
            if let Some(t) = t {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().unwrap());
            }
            check.call(req).map(|_| ()).map_err(|s| s.code())
        };
        assert_eq!(with(Some("s3cret")), Ok(()));
        assert_eq!(with(Some("s3creT")), Err(tonic::Code::Unauthenticated));
        assert_eq!(with(None), Err(tonic::Code::Unauthenticated));
        let mut open = CheckToken::new(None);
        assert!(open.call(Request::new(())).is_ok());
    }
}
