//! The README's table of state × operation -> outcome, one test per cell, over real HTTP on
//! the embedded default. Each test seeds one VM in a state, runs one operation, and checks
//! the answer and the row afterwards.

use std::collections::BTreeMap;

use vmpool::compute::Power;
use vmpool::domain::{Operation, Purpose, VmId, VmRecord, VmState};
use vmpool::store::{Rows, VmStore};

use crate::support::{SimApp, spawn_sim};

/// The operations of the table.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// CreateVM with this VM as the only candidate.
    Create,
    /// ReportGameRoomsNumber with this many rooms.
    Report(u32),
    /// MarkVMForDeallocation.
    Mark,
}

/// What a cell of the table says.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// CreateVM hands out the seeded VM with this status and action; it is then in this
    /// state, with these rooms.
    Claimed(u16, &'static str, VmState, u32),
    /// CreateVM does not take the seeded VM (it creates a new one); the seeded row is
    /// untouched.
    NotACandidate,
    /// 200 with this action; the row is then in this state, for this purpose, with these
    /// rooms.
    Changed(&'static str, VmState, Purpose, u32),
    /// 200 with this action, and the row is untouched.
    Unchanged(&'static str),
    /// 409 naming the state, and the row is untouched.
    Refused,
}

const NAME: &str = "vm-seeded";
/// Rooms the seeded VM has before the operation.
const ROOMS: u32 = 2;

async fn seed(sim: &SimApp, state: VmState, purpose: Purpose) {
    let now = vmpool::clock::Clock::now(&*sim.clock);
    let mut vm = VmRecord::new_creating(
        VmId::parse(NAME).unwrap(),
        format!("/x/{NAME}"),
        purpose,
        now,
    );
    vm.state = state;
    vm.operation = match state {
        VmState::Creating => Some(Operation::Create),
        VmState::Deallocating => Some(Operation::Deallocate),
        _ => None,
    };
    vm.rooms = if matches!(state, VmState::Running | VmState::MarkedForDeallocation) {
        ROOMS
    } else {
        0
    };
    if state == VmState::Deallocated {
        // ARM has it, deallocated, so a start can be accepted.
        sim.cloud.create(NAME, BTreeMap::new()).unwrap();
        sim.clock.advance(time::Duration::minutes(5));
        sim.cloud.force_power(NAME, Power::Deallocated);
    }
    let vm = vm.placed(
        "default",
        &vmpool::config::PoolPolicy::default().pools.all()[0].build,
    );
    sim.store.insert(&vm).await.unwrap();
}

async fn cell(state: VmState, purpose: Purpose, op: Op, want: Want) {
    let sim = spawn_sim(&[]).await;
    seed(&sim, state, purpose).await;
    let id = VmId::parse(NAME).unwrap();
    let before = sim.store.get(&id).await.unwrap().unwrap();
    let got = match op {
        Op::Create => sim.app.create_vm().await,
        Op::Report(rooms) => sim.app.report(NAME, rooms).await,
        Op::Mark => sim.app.mark(NAME).await,
    };
    let after = sim.store.get(&id).await.unwrap().unwrap();
    let context = format!("{state} {purpose:?} {op:?}: {}", got.json);
    if (200..300).contains(&got.status) {
        let path = match op {
            Op::Create => "/api/CreateVM",
            Op::Report(_) => "/api/ReportGameRoomsNumber",
            Op::Mark => "/api/MarkVMForDeallocation",
        };
        let listed = crate::openapi::documented_actions(path, &got.status.to_string());
        assert!(
            listed.contains(&got.json["action"]),
            "{context}: the document lists only {listed:?} for {path}"
        );
    }
    match want {
        Want::Claimed(status, action, next, rooms) => {
            assert_eq!(got.status, status, "{context}");
            assert_eq!(got.json["action"], action, "{context}");
            assert_eq!(got.json["vm"]["vmId"], NAME, "{context}");
            assert_eq!(
                (after.vm.state, after.vm.purpose, after.vm.rooms),
                (next, Purpose::Matchmaker, rooms),
                "{context}"
            );
        }
        Want::NotACandidate => {
            assert_eq!(got.status, 202, "{context}");
            assert_eq!(got.json["action"], "created", "{context}");
            assert_ne!(got.json["vm"]["vmId"], NAME, "{context}");
            assert_eq!(after, before, "{context}");
            assert_eq!(sim.store.list(Rows::All).await.unwrap().len(), 2);
        }
        Want::Changed(action, next, purpose, rooms) => {
            assert_eq!(got.status, 200, "{context}");
            assert_eq!(got.json["action"], action, "{context}");
            assert_eq!(
                (after.vm.state, after.vm.purpose, after.vm.rooms),
                (next, purpose, rooms),
                "{context}"
            );
            assert_eq!(got.json["vm"]["state"], next.as_str(), "{context}");
        }
        Want::Unchanged(action) => {
            assert_eq!(got.status, 200, "{context}");
            assert_eq!(got.json["action"], action, "{context}");
            assert_eq!(after, before, "{context}");
        }
        Want::Refused => {
            assert_eq!(got.status, 409, "{context}");
            assert_eq!(got.json["error"]["code"], "Conflict", "{context}");
            assert!(
                got.json["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(state.as_str()),
                "{context}"
            );
            assert_eq!(after, before, "{context}");
        }
    }
}

macro_rules! table {
    ($($name:ident: $state:ident $purpose:ident, $op:expr => $want:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                cell(VmState::$state, Purpose::$purpose, $op, $want).await;
            }
        )*
    };
}

use Op::{Create, Mark, Report};
use Purpose::{Buffer as B, Matchmaker as M};
use VmState::{Creating, Deallocating, MarkedForDeallocation as Marked, Running, Standby};
use Want::{Changed, Claimed, NotACandidate, Refused, Unchanged};

table! {
    creating_for_the_matchmaker_is_not_a_candidate: Creating Matchmaker, Create => NotACandidate;
    creating_for_the_matchmaker_records_0_rooms: Creating Matchmaker, Report(0) => Changed("recorded", Creating, M, 0);
    creating_for_the_matchmaker_records_rooms: Creating Matchmaker, Report(5) => Changed("recorded", Creating, M, 5);
    creating_for_the_matchmaker_is_marked_into_the_buffer: Creating Matchmaker, Mark => Changed("marked", Creating, B, 0);

    creating_for_the_buffer_is_claimed: Creating Buffer, Create => Claimed(202, "claimedCreating", Creating, 0);
    creating_for_the_buffer_records_0_rooms: Creating Buffer, Report(0) => Changed("recorded", Creating, B, 0);
    creating_for_the_buffer_with_rooms_becomes_the_matchmakers: Creating Buffer, Report(5) => Changed("recorded", Creating, M, 5);
    creating_for_the_buffer_is_already_marked: Creating Buffer, Mark => Unchanged("alreadyMarked");

    running_is_not_a_candidate: Running Matchmaker, Create => NotACandidate;
    running_records_0_rooms: Running Matchmaker, Report(0) => Changed("recorded", Running, M, 0);
    running_records_rooms: Running Matchmaker, Report(5) => Changed("recorded", Running, M, 5);
    running_is_marked: Running Matchmaker, Mark => Changed("marked", Marked, M, ROOMS);

    marked_is_reclaimed_with_its_rooms: MarkedForDeallocation Matchmaker, Create => Claimed(200, "reclaimed", Running, ROOMS);
    marked_with_0_rooms_is_deallocated: MarkedForDeallocation Matchmaker, Report(0) => Changed("deallocating", Deallocating, M, 0);
    marked_records_rooms: MarkedForDeallocation Matchmaker, Report(5) => Changed("recorded", Marked, M, 5);
    marked_is_already_marked: MarkedForDeallocation Matchmaker, Mark => Unchanged("alreadyMarked");

    deallocating_is_not_a_candidate: Deallocating Matchmaker, Create => NotACandidate;
    deallocating_answers_0_rooms_again: Deallocating Matchmaker, Report(0) => Unchanged("deallocating");
    deallocating_refuses_rooms: Deallocating Matchmaker, Report(5) => Refused;
    deallocating_is_already_marked: Deallocating Matchmaker, Mark => Unchanged("alreadyMarked");

    deallocated_is_started: Deallocated Buffer, Create => Claimed(202, "started", Creating, 0);
    deallocated_refuses_0_rooms: Deallocated Buffer, Report(0) => Refused;
    deallocated_refuses_rooms: Deallocated Buffer, Report(5) => Refused;
    deallocated_is_already_marked: Deallocated Buffer, Mark => Unchanged("alreadyMarked");

    standby_is_handed_out: Standby Buffer, Create => Claimed(200, "standby", Running, 0);
    standby_records_0_rooms: Standby Buffer, Report(0) => Changed("recorded", Standby, B, 0);
    standby_with_rooms_is_running: Standby Buffer, Report(5) => Changed("recorded", Running, M, 5);
    standby_is_already_marked: Standby Buffer, Mark => Unchanged("alreadyMarked");

    failed_is_not_a_candidate: Failed Buffer, Create => NotACandidate;
    failed_refuses_0_rooms: Failed Buffer, Report(0) => Refused;
    failed_refuses_rooms: Failed Buffer, Report(5) => Refused;
    failed_refuses_a_mark: Failed Buffer, Mark => Refused;
}
