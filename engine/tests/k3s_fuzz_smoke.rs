//! The k3s fuzz targets' entry points on seeds and mutations of them, as part of
//! `cargo test` (the coverage-guided runs are `cargo fuzz run k3s_snapshot` / `kubeconfig` / `kube_list`).
#![allow(clippy::unwrap_used)]

use std::io::Write;

fn mutations(seed: &[u8], n: usize, mut f: impl FnMut(&[u8])) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    f(seed);
    for _ in 0..n {
        let mut d = seed.to_vec();
        match next() % 4 {
            0 if !d.is_empty() => {
                let i = (next() as usize) % d.len();
                d[i] ^= 1 << (next() % 8);
            }
            1 => d.truncate((next() as usize) % (seed.len() + 1)),
            2 if !d.is_empty() => {
                let i = (next() as usize) % d.len();
                d[i] = next() as u8;
            }
            _ => d.extend((0..(next() % 64)).map(|_| next() as u8)),
        }
        f(&d);
    }
}

#[test]
fn snapshot_and_zip_decoders_survive_mutations() {
    // A zip of a small, not-quite-valid database: exercises the archive and inflate paths.
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    w.start_file(
        "snap",
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated),
    )
    .unwrap();
    w.write_all(&vec![7u8; 3 * 4096 + 32]).unwrap();
    let z = w.finish().unwrap().into_inner();
    mutations(&z, 3000, cairn_engine::k3s::fuzz::snapshot);
    mutations(
        &vec![0u8; 4 * 4096 + 32],
        500,
        cairn_engine::k3s::fuzz::snapshot,
    );
}

#[test]
fn kubeconfig_decoder_survives_mutations() {
    let seed = b"apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: Q0E=\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nusers:\n- name: default\n  user:\n    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n    tokenFile: ../token\n";
    mutations(seed, 3000, cairn_engine::k3s::fuzz::kubeconfig);
}

#[test]
fn kube_list_page_decoder_survives_mutations() {
    // A page as the API server sends it: YAML-1.1 traps in the strings, numbers of each
    // kind, a continue token.
    let seed = br##"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"9","continue":"MTA="},"items":[{"metadata":{"name":"web-0","namespace":"shop","uid":"u","managedFields":[{"manager":"k3s"}],"labels":{"on":"no","n":"0123"}},"spec":{"containers":[{"name":"web","image":"nginx:1.27","args":["a: b","- x","#c","",null,true,1.5e3,-7,18446744073709551615]}]},"status":{"phase":"Running"}},{"metadata":{"name":"x","namespace":"kube-system"},"data":{"multi":"line one\nline two\n","tab":"a\tb","nel":"\u0085"}}]}"##;
    mutations(seed, 5000, cairn_engine::k3s::fuzz::list_page);
    // Keys past YAML's 1024-byte simple-key limit, and a namespace too long for a file name.
    let long = format!(
        r#"{{"items":[{{"metadata":{{"namespace":"a"}},"spec":{{"{}":1,"{}":{{"x":[1]}}}}}},{{"metadata":{{"namespace":"{}"}}}}]}}"#,
        "k".repeat(1100),
        r"\u0001".repeat(200),
        "n".repeat(300)
    );
    mutations(long.as_bytes(), 500, cairn_engine::k3s::fuzz::list_page);
}

#[test]
fn sftp_reply_decoders_survive_mutations() {
    // A NAME packet with one entry (size and mtime attributes), as a server answers READDIR.
    let mut seed = vec![104u8];
    seed.extend_from_slice(&1u32.to_be_bytes());
    for s in [b"f1".as_slice(), b"-rw-r--r-- 1 f1".as_slice()] {
        seed.extend_from_slice(&(s.len() as u32).to_be_bytes());
        seed.extend_from_slice(s);
    }
    seed.extend_from_slice(&(0x1u32 | 0x8).to_be_bytes());
    seed.extend_from_slice(&4096u64.to_be_bytes());
    seed.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
    mutations(&seed, 3000, cairn_engine::fuzz_sftp_reply);
}
