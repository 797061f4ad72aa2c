//! `#[controller]` and `#[derive(Entity)]` end to end: a generated server registered on a
//! kernel, called through the generated client over an in-memory connection.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use rpc_core::{
    ActionInfo, ActionKind, Context, ControllerDescriptor, Entity, ErrorKind, RpcDirectClient,
    RpcKernel, RpcStream, controller,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "user")]
pub struct User {
    pub id: u64,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity, thiserror::Error)]
#[entity(name = "cannot_save_user")]
#[error("cannot save user {id}: {reason}")]
pub struct CannotSaveUser {
    pub id: u64,
    pub reason: String,
}

/// A generic entity: the name is shared by every instantiation.
#[derive(Debug, Serialize, Deserialize, Entity)]
#[entity(name = "page")]
pub struct Page<T> {
    pub items: Vec<T>,
}

#[controller("users")]
pub trait Users {
    /// Greets `title`.
    async fn hello(&self, title: String) -> String;

    async fn get_user(&self, id: u64) -> Result<User, CannotSaveUser>;

    #[action(group = "secret", data(role = "admin"))]
    async fn save_user(&self, user: User) -> Result<(), CannotSaveUser>;

    #[action(name = "tick_stream", group = "a", group = "b")]
    async fn ticks(&self, every_ms: u64, count: u32) -> RpcStream<u64>;

    /// The context is filled in by the server.
    #[action(data(audit = "yes", level = "2"))]
    async fn whoami(&self, ctx: &Context) -> String;

    async fn add(&self, a: i64, ctx: &Context, b: i64) -> (i64, String);

    async fn nothing(&self);

    async fn calls(&self) -> u32;

    async fn with_default(&self, x: u32) -> u32 {
        x * 2
    }

    /// Parameters named like the generated code's locals.
    async fn hygiene(
        &self,
        responder: String,
        args: u8,
        inner: u8,
        output: u8,
        action: u8,
    ) -> String;

    async fn page(&self, n: u64) -> Page<u64>;

    async fn r#type(&self, r#struct: String) -> String;
}

#[derive(Default)]
struct UsersImpl {
    calls: AtomicU32,
}

impl Users for UsersImpl {
    async fn hello(&self, title: String) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        format!("Hello {title}")
    }

    async fn get_user(&self, id: u64) -> Result<User, CannotSaveUser> {
        Ok(User { id, name: format!("user {id}") })
    }

    async fn save_user(&self, user: User) -> Result<(), CannotSaveUser> {
        if user.name.is_empty() {
            return Err(CannotSaveUser { id: user.id, reason: "empty name".into() });
        }
        Ok(())
    }

    async fn ticks(&self, every_ms: u64, count: u32) -> RpcStream<u64> {
        let ticks = futures::stream::iter(0..u64::from(count)).then(move |i| async move {
            tokio::time::sleep(Duration::from_millis(every_ms)).await;
            i
        });
        RpcStream::new(ticks)
    }

    async fn whoami(&self, ctx: &Context) -> String {
        let action = ctx.action();
        format!("{}.{} {:?}", ctx.controller(), action.name, action.data)
    }

    async fn add(&self, a: i64, ctx: &Context, b: i64) -> (i64, String) {
        (a + b, ctx.action().name.to_string())
    }

    async fn nothing(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }

    async fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn hygiene(
        &self,
        responder: String,
        args: u8,
        inner: u8,
        output: u8,
        action: u8,
    ) -> String {
        format!("{responder} {args} {inner} {output} {action}")
    }

    async fn page(&self, n: u64) -> Page<u64> {
        Page { items: (0..n).collect() }
    }

    async fn r#type(&self, r#struct: String) -> String {
        r#struct
    }
}

/// Another view of the `users` controller, as a client built against a different version
/// of the trait would have it.
#[controller("users")]
pub trait UsersV2 {
    async fn hello(&self, title: String, extra: u32) -> String;
    async fn get_user(&self, id: String) -> User;
    async fn removed_action(&self);
}

fn serve() -> (RpcKernel, UsersClient) {
    let kernel = RpcKernel::new();
    kernel.register(UsersServer::new(UsersImpl::default()));
    let client = RpcDirectClient::new(&kernel);
    let users = client.controller::<UsersClient>();
    (kernel, users)
}

#[tokio::test]
async fn plain_arguments() {
    let (_kernel, users) = serve();
    assert_eq!(users.hello("World".into()).await.unwrap(), "Hello World");
    assert_eq!(users.add(2, 40).await.unwrap(), (42, "add".to_string()));
    assert_eq!(users.r#type("raw".into()).await.unwrap(), "raw");
    assert_eq!(users.page(3).await.unwrap().items, vec![0, 1, 2]);
}

#[tokio::test]
async fn context_is_injected() {
    let (_kernel, users) = serve();
    assert_eq!(users.whoami().await.unwrap(), r#"users.whoami [("audit", "yes"), ("level", "2")]"#);
}

#[tokio::test]
async fn custom_action_name_and_server_stream() {
    let (_kernel, users) = serve();
    let stream = users.ticks(1, 4).await.unwrap();
    let ticks: Vec<u64> = stream.map(|item| item.unwrap()).collect().await;
    assert_eq!(ticks, [0, 1, 2, 3]);
}

#[test]
fn action_infos_describe_the_trait() {
    type Server = UsersServer<UsersImpl>;
    assert_eq!(<Server as ControllerDescriptor>::NAME, "users");
    let actions = <Server as ControllerDescriptor>::ACTIONS;
    let names: Vec<_> = actions.iter().map(|a| a.name).collect();
    assert_eq!(
        names,
        [
            "hello",
            "get_user",
            "save_user",
            "tick_stream",
            "whoami",
            "add",
            "nothing",
            "calls",
            "with_default",
            "hygiene",
            "page",
            "type"
        ]
    );
    assert_eq!(
        actions[2],
        ActionInfo {
            name: "save_user",
            groups: &["secret"],
            data: &[("role", "admin")],
            kind: ActionKind::Unary
        }
    );
    assert_eq!(
        actions[3],
        ActionInfo {
            name: "tick_stream",
            groups: &["a", "b"],
            data: &[],
            kind: ActionKind::ServerStream
        }
    );
    assert_eq!(
        actions[0],
        ActionInfo { name: "hello", groups: &[], data: &[], kind: ActionKind::Unary }
    );

    let server = UsersServer::new(UsersImpl::default());
    assert_eq!(rpc_core::Controller::name(&server), "users");
    assert_eq!(rpc_core::Controller::actions(&server).len(), names.len());
    assert_eq!(<UsersClient as rpc_core::ControllerClient>::NAME, "users");
}

#[tokio::test]
async fn unit_return_and_zero_arguments() {
    let (_kernel, users) = serve();
    assert_eq!(users.calls().await.unwrap(), 0);
    users.nothing().await.unwrap();
    users.nothing().await.unwrap();
    assert_eq!(users.calls().await.unwrap(), 2);
}

#[tokio::test]
async fn result_return_with_a_typed_error() {
    let (_kernel, users) = serve();
    assert_eq!(users.get_user(7).await.unwrap(), User { id: 7, name: "user 7".into() });
    users.save_user(User { id: 1, name: "Ann".into() }).await.unwrap();

    let err = users.save_user(User { id: 2, name: String::new() }).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Remote);
    assert_eq!(err.name(), Some(CannotSaveUser::ENTITY_NAME));
    assert!(err.is::<CannotSaveUser>());
    assert_eq!(
        err.downcast::<CannotSaveUser>(),
        Some(CannotSaveUser { id: 2, reason: "empty name".into() })
    );
}

#[tokio::test]
async fn default_bodies_and_hygiene() {
    let (_kernel, users) = serve();
    assert_eq!(users.with_default(21).await.unwrap(), 42);
    assert_eq!(users.hygiene("r".into(), 1, 2, 3, 4).await.unwrap(), "r 1 2 3 4");
}

#[tokio::test]
async fn shared_implementation_and_timeouts() {
    let shared = std::sync::Arc::new(UsersImpl::default());
    let kernel = RpcKernel::new();
    kernel.register(UsersServer::from_arc(shared.clone()));
    let client = RpcDirectClient::new(&kernel);
    let users = client.controller::<UsersClient>().with_timeout(Duration::from_secs(5));
    users.hello("a".into()).await.unwrap();
    users.clone().hello("b".into()).await.unwrap();
    assert_eq!(shared.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn mismatched_clients_get_errors_not_panics() {
    let (kernel, _users) = serve();
    let client = RpcDirectClient::new(&kernel);
    let v2 = client.controller::<UsersV2Client>();

    let err = v2.hello("x".into(), 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");

    let err = v2.get_user("seven".into()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BadArguments, "{err}");
    assert!(err.message().contains("id"), "the argument is named: {err}");

    let err = v2.removed_action().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[test]
fn entity_names() {
    assert_eq!(User::ENTITY_NAME, "user");
    assert_eq!(<Page<u8> as Entity>::ENTITY_NAME, "page");
    assert_eq!(<Page<String> as Entity>::ENTITY_NAME, "page");
}
