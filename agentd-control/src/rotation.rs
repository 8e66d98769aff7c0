//! The lifecycle that JWT signing keys and certificate authorities share: each is published
//! (in the JWKS, in the trust bundle) from its creation, signs from its activation (the newest
//! activated one signs), and is no longer published once retired. A rotation publishes the
//! next one before it signs; a retirement waits until what the old one signed has expired.

use crate::{
    clock::UnixTime,
    error::{Error, Result},
};

/// When one key or CA was created, signs from and was retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime<'a> {
    pub id: &'a str,
    pub created_at: UnixTime,
    pub activates_at: UnixTime,
    pub retired_at: Option<UnixTime>,
}

/// Something that rotates: a JWT signing key, a CA.
pub trait Rotates {
    fn lifetime(&self) -> Lifetime<'_>;
}

/// Where one stands at a moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Published, not signing yet.
    Pending,
    /// Signs.
    Active,
    /// Published; a newer one signs. `since`: when that one took over.
    Superseded {
        since: UnixTime,
    },
    Retired,
}

/// The order in which they take over signing: by activation, then creation, then id.
fn succession(lifetime: Lifetime<'_>) -> (UnixTime, UnixTime, &str) {
    (lifetime.activates_at, lifetime.created_at, lifetime.id)
}

/// Where `one` (one of `all`) stands at `now`.
#[must_use]
pub fn standing_of<T: Rotates>(all: &[T], one: &T, now: UnixTime) -> Standing {
    let me = one.lifetime();
    if me.retired_at.is_some() {
        return Standing::Retired;
    }
    if me.activates_at > now {
        return Standing::Pending;
    }
    // The first one after it in succession that activated while it was live took over.
    let took_over = all
        .iter()
        .map(Rotates::lifetime)
        .filter(|other| succession(*other) > succession(me))
        .filter(|other| other.activates_at <= now)
        .filter(|other| other.retired_at.is_none_or(|at| at > other.activates_at))
        .map(|other| other.activates_at)
        .min();
    match took_over {
        Some(since) => Standing::Superseded { since },
        None => Standing::Active,
    }
}

/// The one that signs at `now`: the last activated in succession, not retired.
pub fn signer_at<T: Rotates>(all: &[T], now: UnixTime) -> Option<&T> {
    all.iter()
        .filter(|one| {
            let lifetime = one.lifetime();
            lifetime.retired_at.is_none() && lifetime.activates_at <= now
        })
        .max_by(|a, b| succession(a.lifetime()).cmp(&succession(b.lifetime())))
}

/// What [`may_retire`] says in its refusals.
#[derive(Clone, Copy, Debug)]
pub struct Kind {
    /// "JWT signing key", "certificate authority".
    pub name: &'static str,
    /// The RPC that rotates to a new one.
    pub rotate: &'static str,
    /// What the old one signed ("token", "certificate").
    pub signed: &'static str,
    /// The longest lifetime of what it signed: how long after it stopped signing something it
    /// signed may still be valid.
    pub longest_signed: UnixTime,
}

/// Whether `id` may be retired at `now`: never the one that signs; a superseded one only once
/// everything it signed has expired ([`Kind::longest_signed`] after it stopped signing),
/// unless `force` (compromised: what it signed stops verifying at once). A pending one may be
/// (the rotation is cancelled).
pub fn may_retire<T: Rotates>(
    all: &[T],
    id: &str,
    now: UnixTime,
    force: bool,
    kind: &Kind,
) -> Result<()> {
    let Some(one) = all.iter().find(|one| one.lifetime().id == id) else {
        return Ok(());
    };
    let Kind {
        name,
        rotate,
        signed,
        longest_signed,
    } = *kind;
    match standing_of(all, one, now) {
        Standing::Active => Err(Error::FailedPrecondition(format!(
            "{name} {id} signs now: rotate to a new one first ({rotate}), then retire this one \
             once what it signed has expired"
        ))),
        Standing::Superseded { since } if !force => {
            let until = since + longest_signed;
            if now < until {
                Err(Error::FailedPrecondition(format!(
                    "{name} {id} signed until {since} (Unix time), and a {signed} it signed may \
                     be valid until {until}; retire it after that, or with force (its \
                     {signed}s stop verifying at once)"
                )))
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// `activate_after_seconds` as a rotation asked for it: `default` when unset, refused above
/// `max` (whole days).
pub fn activate_after(asked: Option<u32>, default: u32, max: u32) -> Result<i64> {
    let after = asked.unwrap_or(default);
    if after > max {
        return Err(Error::invalid(
            "activate_after_seconds",
            format!("{after} is more than {max} ({} days)", max / 86_400),
        ));
    }
    Ok(i64::from(after))
}

/// What a replica holds of a rotating set (JWT keys, CAs): the set last loaded, replaced whole
/// when it is loaded again, so that every reader sees one consistent set.
#[derive(Debug)]
pub struct Ring<T>(std::sync::RwLock<std::sync::Arc<T>>);

impl<T> Ring<T> {
    #[must_use]
    pub fn new(set: T) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(set)))
    }

    /// The set as last loaded.
    #[must_use]
    pub fn current(&self) -> std::sync::Arc<T> {
        std::sync::Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Replaces the set.
    pub fn replace(&self, set: std::sync::Arc<T>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
    }
}
