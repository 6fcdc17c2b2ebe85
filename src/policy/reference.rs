//! casbin, the reference semantics: builds the `Enforcer` for a policy snapshot (which
//! validates the model), recognises whether the model has the shape the compiled index
//! implements, and answers decisions the slow way for `explain`, the differential test
//! and the fallback for unknown models.
//!
//! Runs at snapshot build time; `enforce` runs per request only in fallback mode.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, Model};

use super::PolicyError;
use super::line::{PolicyLine, SourcedLine};

/// The model the compiled index implements (`casbin_model.conf` as shipped).
pub const KNOWN_MODEL: &str = include_str!("../../casbin_model.conf");

/// casbin-rs' API is async, but with a `MemoryAdapter` nothing in it waits on I/O.
/// A minimal thread-parking executor runs it to completion, also when the caller is
/// itself inside a tokio runtime (where `Runtime::block_on` would panic).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unparker(Thread);
    impl Wake for Unparker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unparker(thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut context) {
            Poll::Ready(output) => return output,
            Poll::Pending => thread::park(),
        }
    }
}

fn parse_model(model_name: &str, model_text: &str) -> Result<DefaultModel, PolicyError> {
    block_on(DefaultModel::from_str(model_text)).map_err(|error| PolicyError::Model {
        file: model_name.to_string(),
        message: error.to_string(),
    })
}

/// The model's assertions as casbin normalised them (`r.sub` → `r_sub`), whitespace
/// removed: two models with equal shapes compare equal regardless of comments/spacing.
fn model_shape(model: &DefaultModel) -> BTreeMap<(String, String), String> {
    model
        .get_model()
        .iter()
        .flat_map(|(section, assertions)| {
            assertions.iter().map(move |(key, assertion)| {
                let value: String = assertion
                    .value
                    .chars()
                    .filter(|character| !character.is_whitespace())
                    .collect();
                ((section.clone(), key.clone()), value)
            })
        })
        .collect()
}

/// Builds the enforcer for `lines` and says whether the model is the known shape.
pub fn build_enforcer(
    model_name: &str,
    model_text: &str,
    lines: &[SourcedLine],
) -> Result<(Enforcer, bool), PolicyError> {
    let model = parse_model(model_name, model_text)?;
    // casbin accepts a model without these and then fails every enforce() call; say so now.
    for (section, name) in [
        ("r", "request_definition"),
        ("p", "policy_definition"),
        ("e", "policy_effect"),
        ("m", "matchers"),
    ] {
        let defined = model
            .get_model()
            .get(section)
            .is_some_and(|assertions| assertions.contains_key(section));
        if !defined {
            return Err(PolicyError::Model {
                file: model_name.to_string(),
                message: format!("missing `{section}` in [{name}]"),
            });
        }
    }
    let known_shape = match parse_model("built-in model", KNOWN_MODEL) {
        Ok(known) => model_shape(&known) == model_shape(&model),
        Err(_) => false,
    };

    let mut enforcer =
        block_on(Enforcer::new(model, MemoryAdapter::default())).map_err(|error| {
            PolicyError::Model {
                file: model_name.to_string(),
                message: error.to_string(),
            }
        })?;
    // Policies go straight into the model: with auto-save on, the MemoryAdapter would
    // keep a second copy of every line, and incremental role links would be rebuilt
    // per batch instead of once.
    enforcer.enable_auto_save(false);
    enforcer.enable_auto_build_role_links(false);

    let mut by_kind: HashMap<(&str, &str), Vec<Vec<String>>> = HashMap::new();
    for sourced in lines {
        let fields = sourced.line.fields();
        let (section, kind) = match sourced.line {
            PolicyLine::Grant { .. } => ("p", "p"),
            PolicyLine::Membership { .. } => ("g", "g"),
            PolicyLine::ActionImplies { .. } => ("g", "g2"),
        };
        by_kind.entry((section, kind)).or_default().push(
            fields
                .iter()
                .skip(1)
                .map(|field| field.to_string())
                .collect(),
        );
    }
    for ((section, kind), rules) in by_kind {
        // Duplicates are fine: casbin's policy set deduplicates within one batch.
        enforcer.get_mut_model().add_policies(section, kind, rules);
    }
    enforcer
        .build_role_links()
        .map_err(|error| PolicyError::Casbin(error.to_string()))?;
    Ok((enforcer, known_shape))
}

/// casbin's answer for any of `subjects`. An evaluation error counts as a deny.
pub fn enforce_any(enforcer: &Enforcer, subjects: &[String], object: &str, action: &str) -> bool {
    subjects.iter().any(|subject| {
        // casbin-rs' keyMatch slices the request object at a byte offset taken from the
        // pattern and panics when that falls inside a multi-byte character; a request must
        // never be able to crash the proxy, so such a panic is a deny.
        catch_unwind(AssertUnwindSafe(|| {
            enforcer
                .enforce((subject.as_str(), object, action))
                .unwrap_or(false)
        }))
        .unwrap_or(false)
    })
}
