//! The root of the actor tree: one child actor per capsule, addressed by name.
//!
//! ractor's default supervision stops a parent when a linked child dies; here a child's end is
//! only ever a fact to record, so [`Actor::handle_supervisor_evt`] is overridden and never fails.
//! Names are unique among live capsules; a name whose capsule has exited, failed or stopped can
//! be reused, which replaces the old actor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use elastos::audit::Decision;
use elastos::control::Event;
use elastos::store::Stored;
use nix::sys::signal::Signal;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::mpsc;

use super::capsule::{self, CapsuleActor, Info, RestartPolicy, Spec};
use super::Shared;

pub struct RunSpec {
    pub stored: Stored,
    pub name: Option<String>,
    pub args: Vec<String>,
    pub restart: RestartPolicy,
    pub attach: Option<mpsc::UnboundedSender<Event>>,
    /// `elastos run -i`: what the operator types, for the capsule's stdin; closed at EOF.
    pub stdin: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
    /// Told of its first run's hello or end (`elastos run -d` waits for it).
    pub watch: super::capsule::StartWatch,
}

type Reply<T> = RpcReplyPort<Result<T, String>>;

pub enum RootMsg {
    Run(Box<RunSpec>, Reply<String>),
    Stop(String, Duration, Reply<()>),
    Start(String, Reply<()>),
    Restart(String, Reply<()>),
    Kill(String, Signal, Reply<()>),
    Ps(RpcReplyPort<Vec<Info>>),
    /// Stop every capsule (terminate, then kill after the timeout).
    Shutdown(Duration, RpcReplyPort<()>),
}

pub struct Root {
    pub shared: Arc<Shared>,
}

pub struct RootState {
    children: BTreeMap<String, ActorRef<capsule::Msg>>,
}

const INFO_TIMEOUT: Duration = Duration::from_secs(5);

impl Actor for Root {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<RootMsg>,
        _: (),
    ) -> Result<RootState, ActorProcessingErr> {
        Ok(RootState {
            children: BTreeMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RootMsg>,
        msg: RootMsg,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Run(spec, reply) => {
                let r = self.run(&myself, st, *spec).await;
                let _ = reply.send(r);
            }
            RootMsg::Stop(name, timeout, reply) => {
                let r = match st.children.get(&name) {
                    Some(c) => ractor::call!(c, |port| capsule::Msg::Stop {
                        timeout,
                        reply: port
                    })
                    .map_err(|e| e.to_string()),
                    None => Err(unknown(&name)),
                };
                let _ = reply.send(r);
            }
            RootMsg::Start(name, reply) => {
                let r = match st.children.get(&name) {
                    Some(c) => ractor::call!(c, capsule::Msg::StartAgain)
                        .map_err(|e| e.to_string())
                        .and_then(|r| r),
                    None => Err(unknown(&name)),
                };
                let _ = reply.send(r);
            }
            RootMsg::Restart(name, reply) => {
                let r = match st.children.get(&name) {
                    Some(c) => ractor::call!(c, capsule::Msg::Restart)
                        .map_err(|e| e.to_string())
                        .and_then(|r| r),
                    None => Err(unknown(&name)),
                };
                let _ = reply.send(r);
            }
            RootMsg::Kill(name, sig, reply) => {
                let r = match st.children.get(&name) {
                    Some(c) => c.cast(capsule::Msg::Kill(sig)).map_err(|e| e.to_string()),
                    None => Err(unknown(&name)),
                };
                let _ = reply.send(r);
            }
            RootMsg::Ps(reply) => {
                let mut out = Vec::new();
                for c in st.children.values() {
                    if let Ok(ractor::rpc::CallResult::Success(info)) =
                        c.call(capsule::Msg::Info, Some(INFO_TIMEOUT)).await
                    {
                        out.push(info);
                    }
                }
                let _ = reply.send(out);
            }
            RootMsg::Shutdown(timeout, reply) => {
                // Stop all at once, so the timeout bounds the whole shutdown, not each capsule.
                let mut waits = Vec::new();
                for c in st.children.values() {
                    let c = c.clone();
                    waits.push(tokio::spawn(async move {
                        let _ = c
                            .call(
                                |port| capsule::Msg::Stop {
                                    timeout,
                                    reply: port,
                                },
                                Some(timeout + Duration::from_secs(5)),
                            )
                            .await;
                        c.stop(None);
                    }));
                }
                for w in waits {
                    let _ = w.await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<RootMsg>,
        evt: SupervisionEvent,
        st: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Never propagate: one capsule's end must not stop the supervisor or its siblings.
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => {
                tracing::error!(actor = ?cell.get_name(), %err, "capsule actor failed");
                st.children.retain(|_, c| c.get_id() != cell.get_id());
                self.shared
                    .audit_sync(
                        "supervisor",
                        "actor.failed",
                        &cell.get_name().unwrap_or_default(),
                        Decision::Info,
                        &err.to_string(),
                        None,
                    )
                    .await;
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                st.children.retain(|_, c| c.get_id() != cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

fn unknown(name: &str) -> String {
    format!("no capsule named `{name}` (see `elastos ps`)")
}

impl Root {
    async fn run(
        &self,
        myself: &ActorRef<RootMsg>,
        st: &mut RootState,
        spec: RunSpec,
    ) -> Result<String, String> {
        let name = spec
            .name
            .clone()
            .unwrap_or_else(|| spec.stored.manifest.name.clone());
        elastos_schema::manifest::validate_capsule_name(&name)?;
        if let Some(old) = st.children.get(&name) {
            let live = match old.call(capsule::Msg::Info, Some(INFO_TIMEOUT)).await {
                Ok(ractor::rpc::CallResult::Success(info)) => info.state.is_live(),
                _ => false,
            };
            if live {
                return Err(format!(
                    "a capsule named `{name}` is already running; choose another with --name or stop it first"
                ));
            }
            old.stop(None);
            st.children.remove(&name);
        }
        self.shared.conns.forget(&name);
        let standing = self.shared.standing(&spec.stored.publisher);
        let publisher_label = self.shared.publisher_label(&spec.stored.publisher);
        let child = Spec {
            name: name.clone(),
            stored: spec.stored,
            publisher_label,
            standing,
            args: spec.args,
            restart: spec.restart,
            attach: spec.attach,
            stdin: spec.stdin,
            watch: spec.watch,
        };
        let actor = CapsuleActor {
            shared: self.shared.clone(),
        };
        // Unnamed in ractor's global registry: names are ours to reuse after a capsule ends.
        let (child_ref, _) = Actor::spawn_linked(None, actor, child, myself.get_cell())
            .await
            .map_err(|e| format!("could not start the capsule's actor: {e}"))?;
        st.children.insert(name.clone(), child_ref);
        Ok(name)
    }
}
