//! Bearer-token checks on the coordinator's two services, as tonic interceptors: clients
//! (JobService) and workers (WorkerService) each present the token of their scope. The refusal
//! says which flag or variable to set, and never echoes a token.

use flowsynth_common::auth::{AUTHORIZATION, TOKEN_ENV, Token};
use tonic::{Request, Status};

/// Who calls: a service's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Client,
    Worker,
}

impl Scope {
    fn name(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Worker => "worker",
        }
    }

    /// The coordinator flag that sets this scope's token.
    fn flag(self) -> &'static str {
        match self {
            Scope::Client => "--token-file",
            Scope::Worker => "--worker-token-file",
        }
    }
}

/// The tokens a coordinator requires; the worker token defaults to the client token.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    client: Option<Token>,
    worker: Option<Token>,
}

impl Tokens {
    pub fn new(client: Option<Token>, worker: Option<Token>) -> Self {
        let worker = worker.or_else(|| client.clone());
        Self { client, worker }
    }

    /// Whether any call needs a token.
    pub fn any(&self) -> bool {
        self.client.is_some() || self.worker.is_some()
    }

    fn of(&self, scope: Scope) -> Option<&Token> {
        match scope {
            Scope::Client => self.client.as_ref(),
            Scope::Worker => self.worker.as_ref(),
        }
    }

    /// Checks one call of `scope`: UNAUTHENTICATED for a missing or unknown token,
    /// PERMISSION_DENIED for the other scope's token.
    pub fn check(&self, scope: Scope, req: &Request<()>) -> Result<(), Status> {
        let Some(required) = self.of(scope) else {
            return Ok(());
        };
        let Some(header) = req.metadata().get(AUTHORIZATION) else {
            return Err(Status::unauthenticated(format!(
                "this coordinator requires a {} token: pass --token-file FILE or set {TOKEN_ENV}",
                scope.name()
            )));
        };
        let presented = header.as_bytes();
        if required.is_presented_by(presented) {
            return Ok(());
        }
        let other = match scope {
            Scope::Client => Scope::Worker,
            Scope::Worker => Scope::Client,
        };
        if self.of(other).is_some_and(|t| t.is_presented_by(presented)) {
            return Err(Status::permission_denied(format!(
                "the {} token cannot make {} calls: present the {} token (the coordinator's {})",
                other.name(),
                scope.name(),
                scope.name(),
                scope.flag()
            )));
        }
        Err(Status::unauthenticated(format!(
            "the {} token presented is not this coordinator's: check --token-file / {TOKEN_ENV}",
            scope.name()
        )))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn call(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert(AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn scopes_are_enforced_with_the_right_codes() {
        let tokens = Tokens::new(Token::new("client-secret"), Token::new("worker-secret"));
        assert!(
            tokens
                .check(Scope::Client, &call(Some("client-secret")))
                .is_ok()
        );
        assert!(
            tokens
                .check(Scope::Worker, &call(Some("worker-secret")))
                .is_ok()
        );
        let missing = tokens.check(Scope::Client, &call(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(
            missing.message().contains("--token-file"),
            "{}",
            missing.message()
        );
        let wrong = tokens
            .check(Scope::Worker, &call(Some("guess")))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let scope = tokens
            .check(Scope::Client, &call(Some("worker-secret")))
            .unwrap_err();
        assert_eq!(scope.code(), tonic::Code::PermissionDenied);
        assert!(
            scope.message().contains("--token-file"),
            "{}",
            scope.message()
        );
        for s in [missing, wrong, scope] {
            assert!(!s.message().contains("secret"), "{}", s.message());
        }
        // One token for both when only the client token is set; none: no check.
        let one = Tokens::new(Token::new("t"), None);
        assert!(one.check(Scope::Worker, &call(Some("t"))).is_ok());
        assert!(Tokens::default().check(Scope::Client, &call(None)).is_ok());
    }
}
