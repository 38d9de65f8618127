//! One contract for the VM table, run against both implementations: the in-memory store
//! (the fake every other test leans on) and `TableStore` on Azurite. Where they differ, the
//! fake is wrong.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use time::macros::datetime;
use vmpool::domain::{ClaimKind, Operation, Purpose, VmId, VmRecord, VmState};
use vmpool::store::memory::MemoryStore;
use vmpool::store::{
    Continuation, Etag, MAX_TEXT_CHARS, PageRequest, Rows, StoreError, Versioned, VmStore, Written,
    normalize,
};

use crate::support::table_store;

fn id(raw: &str) -> VmId {
    VmId::parse(raw).unwrap()
}

/// A VM with every field set, times with nanoseconds (finer than the table keeps).
fn full_vm(name: &str, state: VmState) -> VmRecord {
    VmRecord {
        id: id(name),
        state,
        purpose: Purpose::Buffer,
        operation: Some(Operation::Start),
        resource_id: format!(
            "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/{name}"
        ),
        public_ip: Some("203.0.113.7".into()),
        rooms: 12,
        last_report_at: Some(datetime!(2026-01-01 00:00:01.123456789 UTC)),
        state_changed_at: datetime!(2026-01-01 00:00:02.987654321 UTC),
        operation_since: Some(datetime!(2026-01-01 00:00:01.5 UTC)),
        created_at: datetime!(2025-12-31 23:59:59 UTC),
        claimed_at: Some(datetime!(2026-01-01 00:00:03 +02:00)),
        attempts: 2,
        last_error: Some("QuotaExceeded: it's \"full\" — ünïcödé, 'quotes' & <tags>".into()),
        pool: "eu-west".into(),
        build: Some("1.5.0+rc.1".into()),
        report_order: Some(vmpool::domain::ReportOrder::Seq(u64::MAX)),
        attention: Some("the delete did not take after 3 attempts".into()),
        unhealthy: Some(
            "provisioning failed while running: VMExtensionProvisioningError: exit 1".into(),
        ),
    }
}

/// A VM with every optional field empty.
fn bare_vm(name: &str, state: VmState) -> VmRecord {
    let mut vm = VmRecord::new_creating(
        id(name),
        format!(
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/{name}"
        ),
        Purpose::Matchmaker,
        datetime!(2026-01-01 00:00 UTC),
    );
    vm.state = state;
    vm.operation = None;
    vm.operation_since = None;
    vm.claimed_at = None;
    vm.attempts = 0;
    vm
}

fn done(w: Written) -> Etag {
    match w {
        Written::Done(etag) => etag,
        Written::LostRace => panic!("expected the write to happen"),
    }
}

async fn insert(store: &dyn VmStore, vm: &VmRecord) -> Etag {
    done(store.insert(vm).await.unwrap())
}

async fn get(store: &dyn VmStore, name: &str) -> Versioned {
    store.get(&id(name)).await.unwrap().expect("the row")
}

pub async fn rows_round_trip_as_normalised(store: Arc<dyn VmStore>) {
    for vm in [
        full_vm("full-1", VmState::Creating),
        bare_vm("bare-1", VmState::Running),
    ] {
        let etag = insert(&*store, &vm).await;
        let got = get(&*store, vm.id.as_str()).await;
        let want = normalize(&vm).unwrap();
        assert_eq!(got.vm, want);
        assert_eq!(got.etag, etag, "get answers the version the insert made");
        assert_eq!(
            got.vm.state_changed_at.nanosecond() % 100,
            0,
            "times are kept in 100 ns ticks"
        );
    }
}

pub async fn inserting_an_existing_key_loses_and_changes_nothing(store: Arc<dyn VmStore>) {
    let first = full_vm("dup", VmState::Running);
    let etag = insert(&*store, &first).await;
    let mut second = bare_vm("dup", VmState::Creating);
    second.rooms = 99;
    assert_eq!(store.insert(&second).await.unwrap(), Written::LostRace);
    let got = get(&*store, "dup").await;
    assert_eq!(got.vm, normalize(&first).unwrap());
    assert_eq!(got.etag, etag);
}

pub async fn missing_rows_are_none_and_writes_to_them_lose(store: Arc<dyn VmStore>) {
    assert_eq!(store.get(&id("ghost")).await.unwrap(), None);
    let ghost = bare_vm("ghost", VmState::Running);
    let some_etag = insert(&*store, &bare_vm("real", VmState::Running)).await;
    assert_eq!(
        store.update(&ghost, &some_etag).await.unwrap(),
        Written::LostRace
    );
    assert_eq!(
        store.delete(&id("ghost"), &some_etag).await.unwrap(),
        Written::LostRace
    );
    assert_eq!(
        store.get(&id("ghost")).await.unwrap(),
        None,
        "an update never creates a row"
    );
}

pub async fn updates_need_the_current_etag(store: Arc<dyn VmStore>) {
    let vm = bare_vm("upd", VmState::Running);
    let v1 = insert(&*store, &vm).await;
    let mut next = vm.clone();
    next.rooms = 5;
    next.public_ip = Some("198.51.100.1".into());
    let v2 = done(store.update(&next, &v1).await.unwrap());
    assert_ne!(v1, v2, "every write makes a new version");
    let got = get(&*store, "upd").await;
    assert_eq!((got.vm.rooms, got.etag.clone()), (5, v2.clone()));

    // Stale: the first version again.
    let mut stale = next.clone();
    stale.rooms = 77;
    assert_eq!(store.update(&stale, &v1).await.unwrap(), Written::LostRace);
    assert_eq!(get(&*store, "upd").await.vm.rooms, 5);

    // A replace removes what the new row leaves out.
    let mut cleared = next.clone();
    cleared.public_ip = None;
    cleared.last_error = None;
    let v3 = done(store.update(&cleared, &v2).await.unwrap());
    let got = get(&*store, "upd").await;
    assert_eq!(got.vm.public_ip, None);
    assert_eq!(got.etag, v3);
}

pub async fn deletes_need_the_current_etag(store: Arc<dyn VmStore>) {
    let vm = bare_vm("del", VmState::Failed);
    let v1 = insert(&*store, &vm).await;
    let v2 = done(store.update(&vm, &v1).await.unwrap());
    assert_eq!(
        store.delete(&id("del"), &v1).await.unwrap(),
        Written::LostRace
    );
    assert!(store.get(&id("del")).await.unwrap().is_some());
    done(store.delete(&id("del"), &v2).await.unwrap());
    assert_eq!(store.get(&id("del")).await.unwrap(), None);
    assert_eq!(
        store.delete(&id("del"), &v2).await.unwrap(),
        Written::LostRace
    );
    // The key can be used again.
    insert(&*store, &vm).await;
}

pub async fn one_of_many_concurrent_writers_wins(store: Arc<dyn VmStore>) {
    let vm = bare_vm("race", VmState::MarkedForDeallocation);
    let etag = insert(&*store, &vm).await;
    let outcomes = futures::future::join_all((0..10u32).map(|i| {
        let store = store.clone();
        let etag = etag.clone();
        let mut next = vm.clone();
        next.rooms = i;
        async move { store.update(&next, &etag).await.unwrap() }
    }))
    .await;
    let winners = outcomes
        .iter()
        .filter(|w| matches!(w, Written::Done(_)))
        .count();
    assert_eq!(winners, 1, "{outcomes:?}");
    let inserts = futures::future::join_all((0..10).map(|_| {
        let store = store.clone();
        async move {
            store
                .insert(&bare_vm("fresh", VmState::Creating))
                .await
                .unwrap()
        }
    }))
    .await;
    assert_eq!(
        inserts
            .iter()
            .filter(|w| matches!(w, Written::Done(_)))
            .count(),
        1
    );
}

pub async fn lists_select_by_state_with_usable_etags(store: Arc<dyn VmStore>) {
    for (i, state) in VmState::ALL.into_iter().enumerate() {
        insert(&*store, &full_vm(&format!("s{i}"), state)).await;
        insert(&*store, &bare_vm(&format!("t{i}"), state)).await;
    }
    let all = store.list(Rows::All).await.unwrap();
    assert_eq!(all.len(), 14);
    for row in &all {
        let got = get(&*store, row.vm.id.as_str()).await;
        assert_eq!(&got, row, "a listed row equals the row as read");
    }
    for state in VmState::ALL {
        let rows = store.list(Rows::InStates(&[state])).await.unwrap();
        assert_eq!(rows.len(), 2, "{state}");
        assert!(rows.iter().all(|r| r.vm.state == state));
    }
    let two = [VmState::MarkedForDeallocation, VmState::Standby];
    assert_eq!(store.list(Rows::InStates(&two)).await.unwrap().len(), 4);
    assert!(store.list(Rows::InStates(&[])).await.unwrap().is_empty());

    // The version a list gives is the one a conditional write needs.
    let running = store
        .list(Rows::InStates(&[VmState::Running]))
        .await
        .unwrap();
    let mut next = running[0].vm.clone();
    next.state = VmState::MarkedForDeallocation;
    done(store.update(&next, &running[0].etag).await.unwrap());
    assert_eq!(
        store.update(&next, &running[0].etag).await.unwrap(),
        Written::LostRace
    );
}

pub async fn lists_page_past_a_thousand_rows(store: Arc<dyn VmStore>) {
    const N: usize = 1234;
    let names: Vec<String> = (0..N).map(|i| format!("page-{i:05}")).collect();
    futures::stream::iter(names.iter().enumerate())
        .for_each_concurrent(32, |(i, name)| {
            let store = store.clone();
            async move {
                let state = if i % 3 == 0 {
                    VmState::Running
                } else {
                    VmState::Deallocated
                };
                insert(&*store, &bare_vm(name, state)).await;
            }
        })
        .await;
    let all = store.list(Rows::All).await.unwrap();
    assert_eq!(all.len(), N);
    let distinct: BTreeSet<&str> = all.iter().map(|r| r.vm.id.as_str()).collect();
    assert_eq!(distinct.len(), N, "no row twice");
    let running = store
        .list(Rows::InStates(&[VmState::Running]))
        .await
        .unwrap();
    assert_eq!(running.len(), N.div_ceil(3));
}

pub async fn awkward_but_valid_names_work_everywhere(store: Arc<dyn VmStore>) {
    let names = [
        "a",
        "A",
        "0",
        "-",
        "_",
        ".a",
        "a.b",
        "a..b",
        "-.-_",
        "UPPER-lower_9.x",
        &"z".repeat(64),
    ];
    for name in names {
        insert(&*store, &bare_vm(name, VmState::Running)).await;
    }
    assert_eq!(
        get(&*store, "A").await.vm.id.as_str(),
        "A",
        "keys are case-sensitive"
    );
    let listed: BTreeSet<String> = store
        .list(Rows::All)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.vm.id.to_string())
        .collect();
    let want: BTreeSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
    assert_eq!(listed, want);
    for name in names {
        let row = get(&*store, name).await;
        let mut next = row.vm.clone();
        next.rooms = 3;
        let etag = done(store.update(&next, &row.etag).await.unwrap());
        done(store.delete(&id(name), &etag).await.unwrap());
        assert_eq!(store.get(&id(name)).await.unwrap(), None, "{name}");
    }
}

pub async fn extreme_values_are_kept_or_cut_the_same_way(store: Arc<dyn VmStore>) {
    let mut vm = full_vm("extreme", VmState::Failed);
    vm.rooms = u32::MAX;
    vm.attempts = u32::MAX;
    vm.last_error = Some("é".repeat(MAX_TEXT_CHARS + 100));
    insert(&*store, &vm).await;
    let got = get(&*store, "extreme").await.vm;
    assert_eq!((got.rooms, got.attempts), (u32::MAX, u32::MAX));
    assert_eq!(
        got.last_error.as_deref().map(|e| e.chars().count()),
        Some(MAX_TEXT_CHARS)
    );

    let mut ancient = bare_vm("ancient", VmState::Running);
    ancient.created_at = datetime!(1600-12-31 00:00 UTC);
    assert!(matches!(
        store.insert(&ancient).await,
        Err(StoreError::Rejected(_))
    ));
    assert_eq!(store.get(&id("ancient")).await.unwrap(), None);
}

pub async fn the_pool_record_is_kept_apart(store: Arc<dyn VmStore>) {
    use vmpool::reconcile::{PoolMeta, load_meta, save_meta};
    assert_eq!(
        load_meta(store.as_ref()).await.unwrap(),
        (PoolMeta::default(), None)
    );
    let mut meta = PoolMeta {
        last_reconcile_at: Some(datetime!(2026-01-01 00:00:00.123456789 UTC)),
        last_reconcile_summary: "reconciled: 1 completed".into(),
        ..PoolMeta::default()
    };
    let buffer = meta.pool_mut("default");
    buffer.buffer_target = 2;
    buffer.target_raised_at = Some(datetime!(2026-01-01 00:00 UTC));
    save_meta(store.as_ref(), &meta, None).await.unwrap();
    let (got, etag) = load_meta(store.as_ref()).await.unwrap();
    assert_eq!(got, meta);
    let mut next = got.clone();
    next.pool_mut("default").target_raised_at = None;
    next.pool_mut("default").buffer_target = 0;
    save_meta(store.as_ref(), &next, etag.as_ref())
        .await
        .unwrap();
    assert_eq!(load_meta(store.as_ref()).await.unwrap().0, next);
    assert!(
        store.list(Rows::All).await.unwrap().is_empty(),
        "the pool record is not a VM row"
    );
}

pub async fn records_are_written_conditionally(store: Arc<dyn VmStore>) {
    assert_eq!(store.get_record("lease", "reconcile").await.unwrap(), None);
    let Written::Done(first) = store
        .insert_record("lease", "reconcile", r#"{"holder":"a"}"#)
        .await
        .unwrap()
    else {
        panic!("the first insert wins")
    };
    assert_eq!(
        store
            .insert_record("lease", "reconcile", r#"{"holder":"b"}"#)
            .await
            .unwrap(),
        Written::LostRace,
        "a second insert of the same key loses"
    );
    let got = store
        .get_record("lease", "reconcile")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.value.as_str(), &got.etag),
        (r#"{"holder":"a"}"#, &first)
    );
    let Written::Done(second) = store
        .update_record("lease", "reconcile", r#"{"holder":"c"}"#, &first)
        .await
        .unwrap()
    else {
        panic!("an update at the current version wins")
    };
    assert_eq!(
        store
            .update_record("lease", "reconcile", r#"{"holder":"d"}"#, &first)
            .await
            .unwrap(),
        Written::LostRace,
        "an update at a stale version loses"
    );
    assert_eq!(
        store
            .delete_record("lease", "reconcile", &first)
            .await
            .unwrap(),
        Written::LostRace
    );
    assert_eq!(
        store
            .get_record("lease", "reconcile")
            .await
            .unwrap()
            .unwrap()
            .value,
        r#"{"holder":"c"}"#
    );
    // Kinds are separate partitions: the same key under another kind is another record.
    assert!(matches!(
        store
            .insert_record("idempotency", "reconcile", "x")
            .await
            .unwrap(),
        Written::Done(_)
    ));
    assert_eq!(
        store
            .delete_record("lease", "reconcile", &second)
            .await
            .unwrap(),
        Written::Done(second.clone())
    );
    assert_eq!(store.get_record("lease", "reconcile").await.unwrap(), None);
    assert_eq!(
        store
            .update_record("lease", "reconcile", "y", &second)
            .await
            .unwrap(),
        Written::LostRace,
        "an update of a missing record loses"
    );
    assert!(matches!(
        store.insert_record("bad/kind", "k", "v").await,
        Err(StoreError::Rejected(_))
    ));
    assert!(
        store.list(Rows::All).await.unwrap().is_empty(),
        "records are not VM rows"
    );
}

/// Every page of the records of `kind` at `limit` records, following the tokens as text.
async fn walk_records(
    store: &dyn VmStore,
    kind: &str,
    limit: usize,
) -> Vec<Vec<(String, vmpool::store::Record)>> {
    walk(limit, |page| async move {
        store.list_records(kind, &page).await.unwrap()
    })
    .await
}

pub async fn records_of_one_kind_list_in_pages_with_usable_etags(store: Arc<dyn VmStore>) {
    assert_eq!(
        walk_records(&*store, "idempotency", 5).await,
        vec![Vec::new()],
        "no records: one empty page"
    );
    let keys: Vec<String> = (0..23)
        .map(|i| match i % 4 {
            0 => format!("ticket:{i:02}"),
            1 => format!("Match-{i:02}.a_b"),
            2 => format!("{i:02}"),
            _ => format!("z{i:02}"),
        })
        .collect();
    for key in &keys {
        done(
            store
                .insert_record("idempotency", key, &format!("{{\"key\":\"{key}\"}}"))
                .await
                .unwrap(),
        );
    }
    // Other kinds, one a prefix of the kind and one with a quote, are other partitions.
    for kind in ["lease", "idempotencyx", "idem", "o'kind"] {
        done(
            store
                .insert_record(kind, "ticket:00", "other")
                .await
                .unwrap(),
        );
    }
    let pages = walk_records(&*store, "idempotency", 5).await;
    assert!(pages.len() >= 5, "23 records at 5 a page: {}", pages.len());
    let listed: Vec<(String, vmpool::store::Record)> = pages.into_iter().flatten().collect();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(
        listed.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
        expected,
        "every key once, in key order, and no other kind's"
    );
    for (key, record) in &listed {
        assert_eq!(record.value, format!("{{\"key\":\"{key}\"}}"));
        let got = store.get_record("idempotency", key).await.unwrap().unwrap();
        assert_eq!(&got, record, "the listed ETag is the record's");
    }
    assert_eq!(
        walk_records(&*store, "o'kind", 10).await.concat().len(),
        1,
        "a kind with a quote is quoted, not injected"
    );

    // The listed ETags are what conditional writes need.
    let (first, listed_first) = &listed[0];
    done(
        store
            .delete_record("idempotency", first, &listed_first.etag)
            .await
            .unwrap(),
    );
    let (second, listed_second) = &listed[1];
    done(
        store
            .update_record("idempotency", second, "rewritten", &listed_second.etag)
            .await
            .unwrap(),
    );
    assert_eq!(
        store
            .delete_record("idempotency", second, &listed_second.etag)
            .await
            .unwrap(),
        Written::LostRace,
        "a record rewritten since the listing is not deleted with its old ETag"
    );
    let after: Vec<String> = walk_records(&*store, "idempotency", 1000)
        .await
        .concat()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(after.len(), 22);
    assert!(!after.contains(first) && after.contains(second));
    assert!(matches!(
        store
            .list_records("bad/kind", &PageRequest::default())
            .await,
        Err(StoreError::Rejected(_))
    ));
}

/// Every page of `which` at `limit` rows, following the tokens as a caller would.
async fn walk_pages(store: &dyn VmStore, which: Rows<'_>, limit: usize) -> Vec<Vec<Versioned>> {
    walk(limit, |page| async move {
        store.list_page(which, &page).await.unwrap()
    })
    .await
}

/// Every page `fetch` answers at `limit` items, from the first, following the tokens as text
/// (as they travel over HTTP).
async fn walk<T, F, Fut>(limit: usize, mut fetch: F) -> Vec<Vec<T>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: std::future::Future<Output = vmpool::store::Page<T>>,
{
    let mut pages = Vec::new();
    let mut after: Option<Continuation> = None;
    loop {
        let page = fetch(PageRequest { limit, after }).await;
        assert!(page.items.len() <= limit, "a page holds at most its limit");
        pages.push(page.items);
        match page.next {
            Some(next) => after = Some(Continuation::parse(&next.token()).unwrap()),
            None => return pages,
        }
        assert!(pages.len() < 100, "the listing ends");
    }
}

pub async fn pages_hold_every_row_once_in_vm_id_order(store: Arc<dyn VmStore>) {
    let states = [VmState::Running, VmState::Deallocated, VmState::Standby];
    let mut running = BTreeSet::new();
    for i in 0..23 {
        let name = format!("pg-{i:02}");
        let state = states[i % 3];
        if state == VmState::Running {
            running.insert(name.clone());
        }
        insert(&*store, &bare_vm(&name, state)).await;
    }
    let pages = walk_pages(&*store, Rows::All, 5).await;
    let ids: Vec<String> = pages
        .iter()
        .flatten()
        .map(|r| r.vm.id.as_str().to_owned())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in vmId order, no row twice");
    assert_eq!(ids.len(), 23);
    assert!(pages.len() >= 5, "{} pages of at most 5", pages.len());

    let pages = walk_pages(&*store, Rows::InStates(&[VmState::Running]), 3).await;
    let got: Vec<&Versioned> = pages.iter().flatten().collect();
    assert_eq!(
        got.iter()
            .map(|r| r.vm.id.as_str().to_owned())
            .collect::<BTreeSet<_>>(),
        running
    );
    // A listed row's version is usable at once.
    let mut next = got[0].vm.clone();
    next.rooms = 3;
    done(store.update(&next, &got[0].etag).await.unwrap());

    let one = store
        .list_page(Rows::All, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(one.items.len(), 23);
    assert_eq!(one.next, None, "the last page names no next one");
}

pub async fn counts_cover_every_state(store: Arc<dyn VmStore>) {
    let counts = store.count_states().await.unwrap();
    assert_eq!(
        counts.len(),
        VmState::ALL.len(),
        "every state, even at zero"
    );
    assert!(counts.values().all(|n| *n == 0));
    for (i, state) in [VmState::Running, VmState::Running, VmState::Failed]
        .into_iter()
        .enumerate()
    {
        insert(&*store, &full_vm(&format!("cnt-{i}"), state)).await;
    }
    let counts = store.count_states().await.unwrap();
    assert_eq!(counts[&VmState::Running], 2);
    assert_eq!(counts[&VmState::Failed], 1);
    assert_eq!(counts.values().sum::<usize>(), 3);
}

pub async fn state_listings_follow_every_write(store: Arc<dyn VmStore>) {
    let standby = [VmState::Standby];
    let marked = [VmState::MarkedForDeallocation];
    let listed = |rows: Vec<Versioned>| -> Vec<(String, Etag)> {
        rows.into_iter()
            .map(|r| (r.vm.id.as_str().to_owned(), r.etag))
            .collect()
    };
    let vm = bare_vm("idx-1", VmState::Standby);
    let v1 = insert(&*store, &vm).await;
    insert(&*store, &bare_vm("idx-2", VmState::Running)).await;
    assert_eq!(
        listed(store.list(Rows::InStates(&standby)).await.unwrap()),
        vec![("idx-1".to_owned(), v1.clone())]
    );
    // Claimed: it leaves Standby.
    let mut running = vm.clone();
    running.state = VmState::Running;
    let v2 = done(store.update(&running, &v1).await.unwrap());
    assert!(
        store
            .list(Rows::InStates(&standby))
            .await
            .unwrap()
            .is_empty()
    );
    // Given back: it is listed as marked, with the version a claim must name.
    let mut back = running.clone();
    back.state = VmState::MarkedForDeallocation;
    let v3 = done(store.update(&back, &v2).await.unwrap());
    let got = store.list(Rows::InStates(&marked)).await.unwrap();
    assert_eq!(listed(got.clone()), vec![("idx-1".to_owned(), v3.clone())]);
    assert_eq!(got[0].vm, normalize(&back).unwrap());
    // A write in the same state moves the listed version on.
    back.rooms = 4;
    let v4 = done(store.update(&back, &v3).await.unwrap());
    assert_eq!(
        listed(store.list(Rows::InStates(&marked)).await.unwrap()),
        vec![("idx-1".to_owned(), v4.clone())]
    );
    // Deleted: listed nowhere.
    done(store.delete(&id("idx-1"), &v4).await.unwrap());
    for state in VmState::ALL {
        let rows = store.list(Rows::InStates(&[state])).await.unwrap();
        assert!(rows.iter().all(|r| r.vm.id.as_str() != "idx-1"), "{state}");
    }
}

pub async fn samples_hold_only_candidates_of_the_kind_from_after_the_key_and_wrap_round(
    store: Arc<dyn VmStore>,
) {
    for i in 0..30 {
        insert(
            &*store,
            &bare_vm(&format!("smp-d{i:02}"), VmState::Deallocated),
        )
        .await;
    }
    for i in 0..5 {
        insert(&*store, &bare_vm(&format!("smp-r{i}"), VmState::Running)).await;
    }
    // Creating VMs: only those for the buffer can be claimed.
    for (i, purpose) in [Purpose::Matchmaker, Purpose::Buffer, Purpose::Matchmaker]
        .into_iter()
        .enumerate()
    {
        let mut vm = bare_vm(&format!("smp-c{i}"), VmState::Creating);
        vm.purpose = purpose;
        insert(&*store, &vm).await;
    }
    let some = store.sample(ClaimKind::Start, "smp-d04", 10).await.unwrap();
    let names: Vec<&str> = some.iter().map(|r| r.vm.id.as_str()).collect();
    let want: Vec<String> = (5..15).map(|i| format!("smp-d{i:02}")).collect();
    assert_eq!(
        names, want,
        "in key order from the first key after the start"
    );
    let mut next = some[0].vm.clone();
    next.state = VmState::Creating;
    done(store.update(&next, &some[0].etag).await.unwrap());
    let wrapped = store.sample(ClaimKind::Start, "smp-d25", 10).await.unwrap();
    let names: Vec<&str> = wrapped.iter().map(|r| r.vm.id.as_str()).collect();
    assert_eq!(
        names,
        [
            "smp-d26", "smp-d27", "smp-d28", "smp-d29", "smp-d00", "smp-d01", "smp-d02", "smp-d03",
            "smp-d04", "smp-d06"
        ],
        "wraps round to the start, without the one no longer Deallocated"
    );
    let all = store.sample(ClaimKind::Start, "", 100).await.unwrap();
    assert_eq!(
        all.len(),
        29,
        "a sample larger than the rows holds them all"
    );
    let creating = store
        .sample(ClaimKind::ClaimCreating, "smp-c0", 10)
        .await
        .unwrap();
    let names: Vec<&str> = creating.iter().map(|r| r.vm.id.as_str()).collect();
    assert_eq!(names, ["smp-c1"], "only the buffer's Creating VM");
}

macro_rules! contract {
    ($($check:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(std::sync::Arc::new(super::MemoryStore::new())).await;
                }
            )*
        }
        mod azurite {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::table_store().await).await;
                }
            )*
        }
    };
}

contract!(
    rows_round_trip_as_normalised,
    inserting_an_existing_key_loses_and_changes_nothing,
    missing_rows_are_none_and_writes_to_them_lose,
    updates_need_the_current_etag,
    deletes_need_the_current_etag,
    one_of_many_concurrent_writers_wins,
    lists_select_by_state_with_usable_etags,
    lists_page_past_a_thousand_rows,
    awkward_but_valid_names_work_everywhere,
    extreme_values_are_kept_or_cut_the_same_way,
    the_pool_record_is_kept_apart,
    records_are_written_conditionally,
    records_of_one_kind_list_in_pages_with_usable_etags,
    pages_hold_every_row_once_in_vm_id_order,
    counts_cover_every_state,
    state_listings_follow_every_write,
    samples_hold_only_candidates_of_the_kind_from_after_the_key_and_wrap_round,
);
