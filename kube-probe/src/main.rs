//! `kube-probe KUBECONFIG DIR`: the manifests export cairn's `k3s export` does, written with
//! the kube crate: discovery group by group at the preferred version (a group that is down is reported, not fatal),
//! every kind that supports `list`, pages of 500 followed by `continue`, one YAML file per
//! namespace and kind with `apiVersion` and `kind` set on each object. Prints
//! `kinds objects files errors` on stdout.
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use kube::api::{Api, DynamicObject, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersion;
use kube::discovery::{self, verbs, ApiGroup, Scope};
use kube::{Client, Config};

const EXCLUDED_GROUPS: &[&str] = &["metrics.k8s.io"];
const EXCLUDED_RESOURCES: &[&str] = &["events", "events.events.k8s.io"];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (kubeconfig, dir) = (Path::new(&args[1]), PathBuf::from(&args[2]));
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    let mut groups: Vec<ApiGroup> = Vec::new();
    let mut errors = Vec::new();
    // Each group at its preferred version, one request each (as cairn's export does).
    for g in client.list_api_groups().await?.groups {
        if EXCLUDED_GROUPS.contains(&g.name.as_str()) {
            continue;
        }
        let Some(version) = g
            .preferred_version
            .as_ref()
            .or(g.versions.first())
            .map(|v| v.version.clone())
        else {
            continue;
        };
        match discovery::pinned_group(&client, &GroupVersion::gv(&g.name, &version)).await {
            Ok(ag) => groups.push(ag),
            Err(e) => errors.push(format!("{}: {e}", g.name)),
        }
    }
    groups.push(discovery::pinned_group(&client, &GroupVersion::gv("", "v1")).await?);
    let (mut kinds, mut objects) = (0u64, 0u64);
    let mut written: BTreeSet<PathBuf> = BTreeSet::new();
    for group in &groups {
        for (ar, caps) in group.recommended_resources() {
            if !caps.supports_operation(verbs::LIST) {
                continue;
            }
            let resource = if ar.group.is_empty() {
                ar.plural.clone()
            } else {
                format!("{}.{}", ar.plural, ar.group)
            };
            if EXCLUDED_RESOURCES.contains(&resource.as_str()) {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let mut cont: Option<String> = None;
            loop {
                let mut lp = ListParams::default().limit(500);
                if let Some(c) = &cont {
                    lp = lp.continue_token(c);
                }
                let list = match api.list(&lp).await {
                    Ok(l) => l,
                    Err(e) => {
                        errors.push(format!("{resource}: {e}"));
                        break;
                    }
                };
                for mut obj in list.items {
                    obj.types = Some(kube::api::TypeMeta {
                        api_version: ar.api_version.clone(),
                        kind: ar.kind.clone(),
                    });
                    // What cairn's export drops too: fields the server sets.
                    obj.metadata.managed_fields = None;
                    obj.metadata.uid = None;
                    obj.metadata.resource_version = None;
                    obj.metadata.generation = None;
                    obj.metadata.creation_timestamp = None;
                    obj.metadata.self_link = None;
                    if let Some(m) = obj.data.as_object_mut() {
                        m.remove("status");
                    }
                    let folder = match (&caps.scope, &obj.metadata.namespace) {
                        (Scope::Namespaced, Some(ns)) => ns.clone(),
                        _ => "_cluster".to_owned(),
                    };
                    let path = dir.join(folder).join(format!("{resource}.yaml"));
                    if written.insert(path.clone()) {
                        std::fs::create_dir_all(path.parent().unwrap())?;
                    }
                    let yaml = serde_yaml_ng::to_string(&obj)?;
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?;
                    f.write_all(b"---\n")?;
                    f.write_all(yaml.as_bytes())?;
                    objects += 1;
                }
                match list.metadata.continue_ {
                    Some(c) if !c.is_empty() => cont = Some(c),
                    _ => break,
                }
            }
            kinds += 1;
        }
    }
    println!("{kinds} {objects} {} {}", written.len(), errors.len());
    for e in errors {
        eprintln!("{e}");
    }
    Ok(())
}
