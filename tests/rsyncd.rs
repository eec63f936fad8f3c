//! `intersync serve --rsyncd-conf`: an rsync daemon's configuration of three
//! modules (read-only public, authenticated read-write, host-restricted)
//! served over HTTP as configured; wrong passwords, wrong hosts and writes
//! to read-only modules are refused with 401/403, and the client exits
//! with rsync's code 5.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::util::{Dir, Server, get, intersync, run};

fn conf(d: &Dir, extra: &str) -> std::path::PathBuf {
    for (m, f) in [
        ("public", "readme.txt"),
        ("private", "ledger.txt"),
        ("lan", "lan.txt"),
    ] {
        d.write(&format!("{m}/{f}"), format!("{m} data\n").as_bytes());
        d.write(&format!("{m}/sub/deeper.txt"), b"deeper\n");
    }
    d.write("public/junk.tmp", b"junk");
    d.write("public/secret/key", b"do not serve");
    let secrets = d.write("rsyncd.secrets", b"alice:wonderland\nbob:builder\n");
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "# three modules
timeout = 300

[public]
    path = {public}
    comment = Anyone may read
    exclude = *.tmp secret/
    refuse options = delete c*

[private]
    path = {private}
    comment = Staff only
    read only = no
    auth users = alice:rw, bob:ro, carol:deny
    secrets file = {secrets}
    list = no
    incoming chmod = Fgo-rwx,Dgo-rwx

[lan]
    path = {lan}
    hosts allow = 10.0.0.0/8
    hosts deny = *
{extra}",
        public = d.path("public").display(),
        private = d.path("private").display(),
        lan = d.path("lan").display(),
        secrets = secrets.display(),
    );
    d.write("rsyncd.conf", text.as_bytes())
}

fn serve(conf: &Path) -> Server {
    Server::serve(&[
        "--rsyncd-conf".as_ref(),
        conf.as_os_str(),
        "--insecure-auth".as_ref(),
    ])
}

/// `intersync -a URL dst/` (an rsync command line pulling from a module):
/// its exit code and stderr.
fn pull(url: &str, dst: &Path) -> (i32, String) {
    let out = run(intersync().arg("-a").arg(url).arg(dst));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with_login(url: &str, login: &str) -> String {
    url.replacen("http://", &format!("http://{login}@"), 1)
}

#[test]
fn three_modules_serve_as_configured() {
    let d = Dir::new();
    let server = serve(&conf(&d, ""));

    // The listing shows listed modules only.
    let listing = get(&server.url(""), &[]);
    assert_eq!(listing.status, 200);
    let text = listing.text();
    assert!(
        text.contains("public") && text.contains("Anyone may read"),
        "{text}"
    );
    assert!(!text.contains("private"), "{text}");

    // The public module: anyone reads it.
    let (rc, err) = pull(&server.url("public/"), &d.path("got-public"));
    assert_eq!(rc, 0, "{err}");
    assert_eq!(d.read("got-public/readme.txt"), b"public data\n");
    assert_eq!(d.read("got-public/sub/deeper.txt"), b"deeper\n");
    assert!(!d.path("got-public/.intersync").exists());
    // The module's exclude rules leave files out of the export.
    assert!(!d.path("got-public/junk.tmp").exists());
    assert!(!d.path("got-public/secret").exists());
    assert_eq!(get(&server.url("public/secret/key"), &[]).status, 404);
    assert_eq!(get(&server.url("public/junk.tmp"), &[]).status, 404);
    assert_eq!(get(&server.url("public/readme.txt"), &[]).status, 200);
    // `refuse options` binds rsync command lines: rsync's exit 4.
    for refused in ["--delete-after", "--checksum"] {
        let out = run(intersync()
            .args(["-a", refused])
            .arg(server.url("public/"))
            .arg(d.path("refused")));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{refused}: {err}");
        assert!(err.contains("refuse --"), "{err}");
    }

    // The private module: a login, with the right password.
    let private = server.url("private/");
    assert_eq!(get(&private, &[]).status, 401);
    let (rc, err) = pull(&private, &d.path("anon"));
    assert_eq!(rc, 5, "no login: {err}");
    let (rc, err) = pull(&with_login(&private, "alice:wrong"), &d.path("wrong"));
    assert_eq!(rc, 5, "wrong password: {err}");
    assert!(!d.path("wrong/ledger.txt").exists());
    let (rc, err) = pull(
        &with_login(&private, "mallory:wonderland"),
        &d.path("stranger"),
    );
    assert_eq!(rc, 5, "unknown user: {err}");
    let (rc, err) = pull(&with_login(&private, "alice:wonderland"), &d.path("alice"));
    assert_eq!(rc, 0, "{err}");
    assert_eq!(d.read("alice/ledger.txt"), b"private data\n");
    // The password may come from RSYNC_PASSWORD, as rsync takes it.
    let out = run(intersync()
        .env("RSYNC_PASSWORD", "builder")
        .arg("-a")
        .arg(with_login(&private, "bob"))
        .arg(d.path("bob")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The LAN module refuses 127.0.0.1.
    assert_eq!(get(&server.url("lan/.intersync/head"), &[]).status, 403);
    let (rc, err) = pull(&server.url("lan/"), &d.path("lan-copy"));
    assert_eq!(rc, 5, "{err}");
    assert!(err.contains("access denied"), "{err}");

    // An unknown module.
    assert_eq!(get(&server.url("nope/.intersync/head"), &[]).status, 404);
}

/// `intersync sync URL DIR` pushes what changed in the working copy: a
/// read-only module, or a read-only user, refuses it with 403 and exit 5;
/// a read-write user's change lands in the module's folder.
#[test]
fn writes_follow_read_only_and_user_rights() {
    let d = Dir::new();
    let server = serve(&conf(&d, ""));
    let sync = |url: &str, wc: &str| {
        let out = run(intersync().arg("sync").arg(url).arg(d.path(wc)));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Public: a clone works, a push is refused.
    let public = server.url("public/");
    assert_eq!(sync(&public, "wc-public").0, 0);
    d.write("wc-public/new.txt", b"from a client\n");
    let (rc, err) = sync(&public, "wc-public");
    assert_eq!(rc, 5, "{err}");
    assert!(err.contains("read only"), "{err}");
    assert!(!d.path("public/new.txt").exists());
    // So is an rsync command line pushing to it.
    d.write("upload/file.txt", b"pushed\n");
    let out = run(intersync().arg("-a").arg(d.path("upload/")).arg(&public));
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.path("public/file.txt").exists());
    // And alice may push to the private module.
    let out = run(intersync()
        .arg("-a")
        .arg(d.path("upload/"))
        .arg(with_login(&server.url("private/"), "alice:wonderland")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(d.read("private/file.txt"), b"pushed\n");

    // Private: bob may only read; alice may write.
    let as_bob = with_login(&server.url("private/"), "bob:builder");
    assert_eq!(sync(&as_bob, "wc-bob").0, 0);
    d.write("wc-bob/bob.txt", b"bob was here\n");
    let (rc, err) = sync(&as_bob, "wc-bob");
    assert_eq!(rc, 5, "{err}");
    assert!(!d.path("private/bob.txt").exists());
    let as_alice = with_login(&server.url("private/"), "alice:wonderland");
    assert_eq!(sync(&as_alice, "wc-alice").0, 0);
    d.write("wc-alice/alice.txt", b"alice was here\n");
    let (rc, err) = sync(&as_alice, "wc-alice");
    assert_eq!(rc, 0, "{err}");
    assert_eq!(d.read("private/alice.txt"), b"alice was here\n");
    // `incoming chmod` shapes what clients write.
    let mode = std::fs::metadata(d.path("private/alice.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    // carol is named, and denied.
    let as_carol = with_login(&server.url("private/"), "carol:x");
    assert_eq!(sync(&as_carol, "wc-carol").0, 5);
}

#[test]
fn a_secrets_file_others_can_read_is_refused() {
    let d = Dir::new();
    let path = conf(&d, "");
    std::fs::set_permissions(
        d.path("rsyncd.secrets"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let server = serve(&path);
    let (rc, err) = pull(
        &with_login(&server.url("private/"), "alice:wonderland"),
        &d.path("copy"),
    );
    assert_eq!(rc, 5, "{err}");
}

#[test]
fn bad_configurations_are_named() {
    let d = Dir::new();
    // A module without a path: an error naming its line.
    let bad = d.write(
        "bad.conf",
        b"[ok]\npath = /tmp\n\n[broken]\ncomment = no path\n",
    );
    let out = run(intersync()
        .args(["serve", "--listen", "127.0.0.1:0", "--rsyncd-conf"])
        .arg(&bad));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":4:") && err.contains("broken"), "{err}");
    // Logins over plain HTTP need --insecure-auth.
    let path = conf(&d, "");
    let out = run(intersync()
        .args(["serve", "--listen", "127.0.0.1:0", "--rsyncd-conf"])
        .arg(&path));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[private]") && err.contains("TLS"), "{err}");
    // Unknown parameters are warned about by name, not fatal.
    let path = conf(&d, "    frobnicate = yes\n");
    let server = Server::serve(&[
        "--rsyncd-conf".as_ref(),
        path.as_os_str(),
        "--insecure-auth".as_ref(),
    ]);
    assert_eq!(get(&server.url("public/.intersync/head"), &[]).status, 200);
}
