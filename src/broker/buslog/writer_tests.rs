//! Tests of the writer's pure rules: the group-commit wait, stamps that never
//! go back, and the sync plan for logs sharing a file system.

use super::*;

#[test]
fn a_commit_waits_briefly_for_publishers_that_are_about_to_join() {
    let ms = Duration::from_millis;
    let us = Duration::from_micros;
    // Alone, or everyone is already here: no wait.
    assert_eq!(group_wait([0, 0], ms(1), 1), (1, Duration::ZERO));
    assert_eq!(group_wait([1, 1], ms(1), 1), (1, Duration::ZERO));
    assert_eq!(group_wait([6, 58], ms(1), 60), (60, Duration::ZERO));
    // The alternating pattern: wait for the bigger half, half a sync.
    assert_eq!(group_wait([58, 6], us(400), 3), (58, us(200)));
    // Capped: a slow disk does not make every commit wait long.
    assert_eq!(group_wait([58, 6], ms(20), 3), (58, GROUP_WAIT_MAX));
}

#[test]
fn stamps_follow_the_clock_but_never_go_back() {
    assert_eq!(next_stamp(1_000, 0), 1_000);
    assert_eq!(next_stamp(1_005, 1_000), 1_005);
    // The clock was set back 10 s: the stamp holds until it catches up.
    assert_eq!(next_stamp(995, 1_005), 1_005);
}

#[test]
fn many_files_on_one_filesystem_share_one_syncfs() {
    use SyncPlan::*;
    assert_eq!(sync_plan(&[]), FdatasyncEach);
    assert_eq!(sync_plan(&[Some(1), Some(1)]), FdatasyncEach);
    assert_eq!(sync_plan(&[Some(1), Some(1), Some(1)]), OneSyncfs);
    assert_eq!(sync_plan(&[Some(1), Some(2), Some(1)]), FdatasyncEach);
    assert_eq!(sync_plan(&[None, Some(1), Some(1)]), FdatasyncEach);
    assert_eq!(sync_plan(&[Some(1), Some(1), None]), FdatasyncEach);

    // And the real calls succeed on real files of both shapes.
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<OpenLog> = (0..5)
        .map(|i| {
            let file = File::create(dir.path().join(format!("{i}.log"))).unwrap();
            let fs = Some(file.metadata().unwrap().dev());
            OpenLog {
                file,
                len: 0,
                alloc: 0,
                fs,
            }
        })
        .collect();
    let refs: Vec<&OpenLog> = logs.iter().collect();
    sync_all_data(&refs).unwrap();
    sync_all_data(&refs[..2]).unwrap();
}
