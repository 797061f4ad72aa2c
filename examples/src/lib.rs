//! The shared contract of the examples: one trait, used by the server binary (which
//! implements it) and the client binary (which calls it through the generated proxy).
//!
//! This is the shape API.md describes: a crate both sides depend on.

use std::time::Duration;

use rpc_core::{Context, Entity, RpcStream, controller};
use serde::{Deserialize, Serialize};

/// A user, with a stable nominal name on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[entity(name = "user")]
pub struct User {
    /// The user's id.
    pub id: u64,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
}

/// A typed, nominal error: travels to the client with its name and fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity, thiserror::Error)]
#[entity(name = "@error:cannotSaveUser")]
#[error("cannot save user: {reason}")]
pub struct CannotSaveUser {
    /// Why.
    pub reason: String,
}

/// The users controller, as both sides see it.
#[controller("users")]
pub trait Users {
    /// Greets.
    async fn hello(&self, title: String) -> String;
    /// Looks a user up.
    async fn get_user(&self, id: u64) -> Result<User, CannotSaveUser>;
    /// Saves a user (members of the `secret` group only, when a policy says so).
    #[action(group = "secret", data(role = "admin"))]
    async fn save_user(&self, user: User) -> Result<(), CannotSaveUser>;
    /// A streaming action: `count` ticks, one every `every_ms`.
    async fn ticks(&self, every_ms: u64, count: u32) -> RpcStream<u64>;
    /// Who the server thinks is calling.
    async fn whoami(&self, ctx: &Context) -> String;
}

/// An in-memory implementation of [`Users`].
#[derive(Default)]
pub struct UsersImpl {
    users: parking_lot::Mutex<Vec<User>>,
}

impl UsersImpl {
    /// An empty user store with Ada in it.
    pub fn new() -> UsersImpl {
        let ada = User { id: 1, first_name: "Ada".into(), last_name: "Lovelace".into() };
        UsersImpl { users: parking_lot::Mutex::new(vec![ada]) }
    }
}

impl Users for UsersImpl {
    async fn hello(&self, title: String) -> String {
        format!("Hello {title}")
    }

    async fn get_user(&self, id: u64) -> Result<User, CannotSaveUser> {
        self.users
            .lock()
            .iter()
            .find(|u| u.id == id)
            .cloned()
            .ok_or_else(|| CannotSaveUser { reason: format!("no user {id}") })
    }

    async fn save_user(&self, user: User) -> Result<(), CannotSaveUser> {
        if user.first_name.is_empty() {
            return Err(CannotSaveUser { reason: "first name is empty".into() });
        }
        let mut users = self.users.lock();
        users.retain(|u| u.id != user.id);
        users.push(user);
        Ok(())
    }

    async fn ticks(&self, every_ms: u64, count: u32) -> RpcStream<u64> {
        RpcStream::new(async_stream::stream! {
            for i in 0..count as u64 {
                tokio::time::sleep(Duration::from_millis(every_ms)).await;
                yield i;
            }
        })
    }

    async fn whoami(&self, ctx: &Context) -> String {
        ctx.session().username().to_string()
    }
}
