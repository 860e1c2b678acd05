//! `init_cell`: the files it writes load back, keys are private, and loaders reject
//! impossible cells with clear errors.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chubby_server::cell::{
    init_cell, issue_client_cert, CellError, CellFile, ReplicaConfig, REPLICAS_MAX,
};
use chubby_server::transport::identity::describe_certificate;
use chubby_server::transport::TlsIdentity;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("file exists")
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn init_cell_writes_a_loadable_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cell");
    let layout = init_cell(&dir, 3, "127.0.0.1", 7000).unwrap();

    assert_eq!(mode(&layout.ca_key), 0o600);
    assert_eq!(mode(&layout.admin.key), 0o600);
    assert_eq!(layout.replica_configs.len(), 3);
    for (i, path) in layout.replica_configs.iter().enumerate() {
        let n = u32::try_from(i + 1).unwrap();
        let cfg = ReplicaConfig::load(path).unwrap();
        assert_eq!(cfg.id, n);
        assert_eq!(cfg.members.len(), 3);
        let me = cfg.me().unwrap();
        assert_eq!(me.peer_port, 7000 + 2 * u16::try_from(i).unwrap());
        assert_eq!(me.client_port, me.peer_port + 1);
        assert_eq!(cfg.data_dir, dir.join(format!("replica-{n}")).join("data"));
        assert!(cfg.data_dir.is_dir());
        assert_eq!(mode(&cfg.tls.key), 0o600);
        let id = TlsIdentity::load(&cfg.tls).unwrap();
        let cert = describe_certificate(&id.chain[0]).unwrap();
        assert_eq!(cert.common_name, format!("replica-{n}"));
        assert!(cert.server_auth);
    }

    let cell = CellFile::load(&layout.cell_file).unwrap();
    assert_eq!(
        cell.replicas,
        vec!["127.0.0.1:7001", "127.0.0.1:7003", "127.0.0.1:7005"]
    );
    assert_eq!(cell.tls.cert, dir.join("admin/cert.pem"));
    let admin = TlsIdentity::load(&cell.tls).unwrap();
    let cert = describe_certificate(&admin.chain[0]).unwrap();
    assert_eq!(cert.common_name, "admin");
    assert!(!cert.server_auth);

    // Client certificates, one per principal; replica- is reserved.
    let alice = issue_client_cert(&dir, "alice").unwrap();
    assert_eq!(mode(&alice.key), 0o600);
    let cert = describe_certificate(&TlsIdentity::load(&alice).unwrap().chain[0]).unwrap();
    assert_eq!(cert.common_name, "alice");
    assert!(!cert.server_auth);
    assert!(matches!(
        issue_client_cert(&dir, "alice"),
        Err(CellError::NotEmpty(_))
    ));
    for bad in ["replica-4", "", "../x", "a b"] {
        assert!(
            matches!(
                issue_client_cert(&dir, bad),
                Err(CellError::BadPrincipal(..))
            ),
            "{bad}"
        );
    }

    // A second init into the same directory is refused and changes nothing.
    let ca_before = std::fs::read(&layout.ca_key).unwrap();
    assert!(matches!(
        init_cell(&dir, 3, "127.0.0.1", 7000),
        Err(CellError::NotEmpty(_))
    ));
    assert_eq!(std::fs::read(&layout.ca_key).unwrap(), ca_before);
}

#[test]
fn init_cell_accepts_an_existing_empty_dir_and_dns_hosts() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = init_cell(tmp.path(), 1, "chubby.example", 7100).unwrap();
    let cfg = ReplicaConfig::load(&layout.replica_configs[0]).unwrap();
    assert_eq!(cfg.members[0].host, "chubby.example");
}

#[test]
fn replica_counts_and_ports_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    for n in [0, 2, 4, REPLICAS_MAX + 1, REPLICAS_MAX + 2] {
        assert!(
            matches!(
                init_cell(&tmp.path().join(format!("c{n}")), n, "127.0.0.1", 7000),
                Err(CellError::ReplicaCount(m)) if m == n
            ),
            "{n}"
        );
    }
    assert!(matches!(
        init_cell(&tmp.path().join("p"), 5, "127.0.0.1", 65530),
        Err(CellError::Ports { .. })
    ));
    assert!(matches!(
        init_cell(&tmp.path().join("z"), 1, "127.0.0.1", 0),
        Err(CellError::Ports { .. })
    ));
    // Nothing was written for refused cells.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

fn invalid_reason(r: Result<ReplicaConfig, CellError>) -> CellError {
    match r {
        Err(CellError::Invalid { source, .. }) => *source,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn loaders_report_bad_files_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = init_cell(&tmp.path().join("cell"), 3, "127.0.0.1", 7000).unwrap();
    let good = std::fs::read_to_string(&layout.replica_configs[0]).unwrap();
    let path = tmp.path().join("config.toml");

    let err = ReplicaConfig::load(&tmp.path().join("missing.toml")).unwrap_err();
    assert!(matches!(err, CellError::Io { .. }));
    assert!(err.to_string().contains("missing.toml"), "{err}");

    std::fs::write(&path, "id = [").unwrap();
    let err = ReplicaConfig::load(&path).unwrap_err();
    assert!(matches!(err, CellError::Toml { .. }), "{err}");
    std::fs::write(&path, good.replace("bind_host", "bind_hots")).unwrap();
    assert!(matches!(
        ReplicaConfig::load(&path),
        Err(CellError::Toml { .. })
    ));

    std::fs::write(&path, good.replacen("id = 1", "id = 4", 1)).unwrap();
    assert!(matches!(
        invalid_reason(ReplicaConfig::load(&path)),
        CellError::UnknownId(4)
    ));

    let mut cfg: ReplicaConfig = toml::from_str(&good).unwrap();
    cfg.members[2].id = 2;
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    assert!(matches!(
        invalid_reason(ReplicaConfig::load(&path)),
        CellError::DuplicateId(2)
    ));

    let mut cfg: ReplicaConfig = toml::from_str(&good).unwrap();
    cfg.members.pop();
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    assert!(matches!(
        invalid_reason(ReplicaConfig::load(&path)),
        CellError::ReplicaCount(2)
    ));

    let mut cfg: ReplicaConfig = toml::from_str(&good).unwrap();
    cfg.members[1].id = 0;
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    assert!(matches!(
        invalid_reason(ReplicaConfig::load(&path)),
        CellError::ZeroId
    ));

    let cell = tmp.path().join("cell.toml");
    std::fs::write(
        &cell,
        "replicas = [\"a:1\", \"a:1\", \"b:1\"]\n[tls]\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n",
    )
    .unwrap();
    assert!(matches!(
        CellFile::load(&cell),
        Err(CellError::Invalid { source, .. }) if matches!(*source, CellError::DuplicateAddress(_))
    ));
}
