//! Every listable API resource of a cluster, as YAML, straight from the API server: the
//! `k3s-manifests` source. No kubectl is needed (the container image has none).
//!
//! Discovery is what `kubectl api-resources --verbs=list` does: `/api/v1`, then every group
//! of `/apis` at its preferred version; subresources and kinds without `list` are skipped,
//! and so are the kinds in [`DEFAULT_EXCLUDES`] (events are a log, not state; metrics are
//! computed). Each kind is listed in pages (`limit`/`continue`), so memory is one page
//! whatever the cluster's size, and each object is written to
//! `<namespace>/<resource>.yaml` (`_cluster/<resource>.yaml` for cluster-scoped kinds),
//! where `<resource>` is kubectl's name for it (`deployments.apps`, `secrets`). Restoring
//! one namespace is restoring one directory.
//!
//! Objects are written ready for `kubectl apply`: the fields the server sets (`status`,
//! `metadata.uid`, `resourceVersion`, `generation`, `creationTimestamp`, `selfLink`,
//! `managedFields`) are dropped unless `raw` is set — a `resourceVersion` makes the API
//! server refuse to create the object in a new cluster. Secrets are included: the
//! repository is encrypted.
//!
//! A kind (or an API group) that cannot be listed is an error of the export: the other kinds
//! are still written, and the caller stores the export as partial and fails the source.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::{Error, Result};

/// Kinds skipped unless `include-resources` names them: events are a log, not state, and
/// `metrics.k8s.io` is computed on the fly.
pub const DEFAULT_EXCLUDES: &[&str] = &["events", "events.events.k8s.io", "*.metrics.k8s.io"];

/// Where the API server is and who we are to it.
#[derive(Clone)]
pub struct KubeAccess {
    /// `https://127.0.0.1:6443`.
    pub server: String,
    /// PEM of the CA that signed the server's certificate (else the system's roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Skip server verification (kubeconfig `insecure-skip-tls-verify`).
    pub insecure: bool,
    /// Bearer token.
    pub token: Option<String>,
    /// Client certificate and key, PEM, concatenated.
    pub identity_pem: Option<Vec<u8>>,
    /// HTTP basic credentials.
    pub basic: Option<(String, String)>,
}

impl std::fmt::Debug for KubeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeAccess")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// A certificate, key or token file named by a kubeconfig: read at most 1 MiB of it (a
/// kubeconfig naming `/dev/zero` must not exhaust memory).
fn read_small(path: &Path) -> Result<Vec<u8>> {
    const LIMIT: u64 = 1 << 20;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, LIMIT + 1), &mut out)
        .map_err(|e| Error::io(path, e))?;
    if out.len() as u64 > LIMIT {
        return Err(Error::Invalid(format!(
            "{}: larger than 1 MiB, not a certificate, key or token",
            path.display()
        )));
    }
    Ok(out)
}

/// A service account's mounted credentials.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubeAccess {
    /// From a kubeconfig file's current context (K3s writes `/etc/rancher/k3s/k3s.yaml`).
    pub fn from_kubeconfig(path: &Path) -> Result<KubeAccess> {
        let text = read_small(path)?;
        KubeAccess::from_kubeconfig_bytes(&text, path)
    }

    /// [`KubeAccess::from_kubeconfig`] of a kubeconfig's bytes; files it names are relative
    /// to `path`'s directory.
    pub fn from_kubeconfig_bytes(text: &[u8], path: &Path) -> Result<KubeAccess> {
        let bad = |why: String| Error::Invalid(format!("kubeconfig {}: {why}", path.display()));
        let doc: Value = serde_yaml_ng::from_slice(text).map_err(|e| bad(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("/"));
        let named = |list: &str, name: &str, field: &str| -> Option<Value> {
            doc.get(list)?
                .as_array()?
                .iter()
                .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
                .get(field)
                .cloned()
        };
        let current = doc
            .get("current-context")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no current-context".into()))?;
        let ctx = named("contexts", current, "context")
            .ok_or_else(|| bad(format!("context {current:?} not found")))?;
        let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let cluster_name =
            s(&ctx, "cluster").ok_or_else(|| bad("context has no cluster".into()))?;
        let cluster = named("clusters", &cluster_name, "cluster")
            .ok_or_else(|| bad(format!("cluster {cluster_name:?} not found")))?;
        let user = s(&ctx, "user")
            .and_then(|u| named("users", &u, "user"))
            .unwrap_or(Value::Null);
        // `x-data` (base64) or `x` (a file, relative to the kubeconfig).
        let blob = |v: &Value, key: &str| -> Result<Option<Vec<u8>>> {
            if let Some(d) = s(v, &format!("{key}-data")) {
                return base64::engine::general_purpose::STANDARD
                    .decode(d.trim())
                    .map(Some)
                    .map_err(|e| bad(format!("{key}-data: {e}")));
            }
            match s(v, key) {
                Some(f) => read_small(&base.join(f)).map(Some),
                None => Ok(None),
            }
        };
        let server = s(&cluster, "server").ok_or_else(|| bad("cluster has no server".into()))?;
        let identity_pem = match (
            blob(&user, "client-certificate")?,
            blob(&user, "client-key")?,
        ) {
            (Some(mut c), Some(k)) => {
                c.push(b'\n');
                c.extend_from_slice(&k);
                Some(c)
            }
            _ => None,
        };
        let token = match (s(&user, "token"), s(&user, "tokenFile")) {
            (Some(t), _) => Some(t),
            (None, Some(f)) => Some(
                String::from_utf8_lossy(&read_small(&base.join(f))?)
                    .trim()
                    .to_owned(),
            ),
            _ => None,
        };
        let basic = s(&user, "username").zip(s(&user, "password"));
        if identity_pem.is_none() && token.is_none() && basic.is_none() {
            // Credential plugins run programs (cloud CLIs) that a backup job should not
            // depend on; going on without credentials would only end in 401s.
            for plugin in ["exec", "auth-provider"] {
                if user.get(plugin).is_some() {
                    return Err(bad(format!(
                        "user credentials come from an `{plugin}` plugin, which cairn does not run: \
                         give it a kubeconfig with a client certificate or a token \
                         (K3s's /etc/rancher/k3s/k3s.yaml has one)"
                    )));
                }
            }
        }
        Ok(KubeAccess {
            server,
            ca_pem: blob(&cluster, "certificate-authority")?,
            insecure: cluster
                .get("insecure-skip-tls-verify")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            token,
            identity_pem,
            basic,
        })
    }

    /// Inside a pod: the service account's token and CA, the API server from the
    /// environment Kubernetes sets.
    pub fn in_cluster() -> Result<KubeAccess> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| Error::Invalid("not in a pod: KUBERNETES_SERVICE_HOST unset".into()))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = Path::new(SA_DIR);
        let token = String::from_utf8_lossy(&read_small(&dir.join("token"))?).into_owned();
        let ca = read_small(&dir.join("ca.crt"))?;
        Ok(KubeAccess {
            server: format!("https://{host}:{port}"),
            ca_pem: Some(ca),
            insecure: false,
            token: Some(token.trim().to_owned()),
            identity_pem: None,
            basic: None,
        })
    }

    /// The kubeconfig if given, else the service account inside a pod, else K3s's
    /// `/etc/rancher/k3s/k3s.yaml`.
    pub fn discover(kubeconfig: Option<&Path>) -> Result<KubeAccess> {
        match kubeconfig {
            Some(p) => KubeAccess::from_kubeconfig(p),
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                KubeAccess::in_cluster()
            }
            None => KubeAccess::from_kubeconfig(Path::new("/etc/rancher/k3s/k3s.yaml")),
        }
    }
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Resource patterns to skip (`secrets`, `*.cattle.io`), besides [`DEFAULT_EXCLUDES`].
    pub exclude: Vec<String>,
    /// Patterns taken out of the default excludes (`events`).
    pub include: Vec<String>,
    /// Keep the server-set fields.
    pub raw: bool,
    /// Objects per list request.
    pub page_size: u32,
    /// Per request.
    pub timeout: Duration,
    /// Counts objects written (as files), YAML bytes and failed kinds as the export goes.
    pub progress: Option<std::sync::Arc<crate::Progress>>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            progress: None,
            exclude: Vec::new(),
            include: Vec::new(),
            raw: false,
            page_size: 500,
            timeout: Duration::from_secs(60),
        }
    }
}

/// What an export wrote, and what it could not.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ExportReport {
    /// Kinds listed.
    pub kinds: u64,
    /// Objects written.
    pub objects: u64,
    /// Files written.
    pub files: u64,
    /// Kinds left out by the excludes.
    pub excluded: Vec<String>,
    /// Kinds or groups that failed, with why.
    pub errors: Vec<String>,
}

/// A list answer read as it is parsed: each of `items` is handed to `each` as a raw JSON
/// slice of the body the moment the parser reaches it, so no per-item array is built
/// (a page of a hundred million `0`s would otherwise cost gigabytes); the continue token is
/// kept. `each` returns `false` to stop the parse.
struct PageReader<'s, F> {
    each: &'s mut F,
    cont: &'s mut Option<String>,
}

impl<'de, F: FnMut(&'de serde_json::value::RawValue) -> bool> serde::de::Visitor<'de>
    for PageReader<'_, F>
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes list")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // A repeated key is refused, as a derived struct would: a second `metadata` without
        // a token would otherwise end the listing early and look like success.
        let (mut items, mut metadata) = (false, false);
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*key {
                "items" => {
                    if std::mem::replace(&mut items, true) {
                        return Err(serde::de::Error::duplicate_field("items"));
                    }
                    map.next_value_seed(Items {
                        each: &mut *self.each,
                    })?
                }
                "metadata" => {
                    if std::mem::replace(&mut metadata, true) {
                        return Err(serde::de::Error::duplicate_field("metadata"));
                    }
                    let m: Option<ListMeta> = map.next_value()?;
                    *self.cont = m.and_then(|m| m.cont);
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl<'de, F: FnMut(&'de serde_json::value::RawValue) -> bool> serde::de::DeserializeSeed<'de>
    for PageReader<'_, F>
{
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

/// `items`: null or an array, element by element.
struct Items<'s, F> {
    each: &'s mut F,
}

impl<'de, F: FnMut(&'de serde_json::value::RawValue) -> bool> serde::de::Visitor<'de>
    for Items<'_, F>
{
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of objects or null")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            if !(self.each)(item) {
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

impl<'de, F: FnMut(&'de serde_json::value::RawValue) -> bool> serde::de::DeserializeSeed<'de>
    for Items<'_, F>
{
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

#[derive(serde::Deserialize)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    cont: Option<String>,
}

/// One listable kind.
#[derive(Debug, Clone)]
struct Kind {
    /// kubectl's name: `secrets`, `deployments.apps`.
    resource: String,
    /// `v1`, `apps/v1`.
    group_version: String,
    kind: String,
    namespaced: bool,
}

impl Kind {
    fn list_path(&self) -> String {
        let plural = self.resource.split('.').next().unwrap_or_default();
        if self.group_version.contains('/') {
            format!("/apis/{}/{plural}", self.group_version)
        } else {
            format!("/api/{}/{plural}", self.group_version)
        }
    }
}

struct Api {
    client: reqwest::blocking::Client,
    access: KubeAccess,
}

/// List pages larger than this are refused: a page of 500 objects is far below it.
const MAX_RESPONSE: u64 = 256 << 20;

/// Discovery answers (parsed whole, unlike list pages) larger than this are refused: a K3s
/// server's largest, `/api/v1`, is ~10 KB.
const MAX_DISCOVERY: u64 = 16 << 20;

impl Api {
    fn new(access: &KubeAccess, timeout: Duration) -> Result<Api> {
        let mut b = reqwest::blocking::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(15))
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")));
        let bad = |e: reqwest::Error| Error::Invalid(format!("Kubernetes client: {e}"));
        if let Some(ca) = &access.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(ca).map_err(bad)?;
            b = b.tls_certs_only(certs);
        }
        if let Some(id) = &access.identity_pem {
            b = b.identity(reqwest::Identity::from_pem(id).map_err(bad)?);
        }
        if access.insecure {
            b = b.danger_accept_invalid_certs(true);
        }
        Ok(Api {
            client: b.build().map_err(bad)?,
            access: access.clone(),
        })
    }

    fn get(&self, path: &str, query: &[(&str, &str)]) -> std::result::Result<Value, String> {
        let body = self.get_bytes(path, query, MAX_DISCOVERY)?;
        serde_json::from_slice(&body).map_err(|e| format!("GET {path}: not JSON: {e}"))
    }

    /// The body of a successful answer, at most `max` bytes.
    fn get_bytes(
        &self,
        path: &str,
        query: &[(&str, &str)],
        max: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        let mut url = format!("{}{path}", self.access.server.trim_end_matches('/'));
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&percent_encode(v));
        }
        let mut req = self.client.get(&url).header("Accept", "application/json");
        if let Some(t) = &self.access.token {
            req = req.bearer_auth(t);
        } else if let Some((u, p)) = &self.access.basic {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(format!("GET {url}: response larger than {max} bytes"));
        }
        // Sized from the header when there is one: doubling would hold up to twice a page.
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(resp, max + 1), &mut body)
            .map_err(|e| format!("GET {url}: {e}"))?;
        if body.len() as u64 > max {
            return Err(format!("GET {url}: response larger than {max} bytes"));
        }
        if !status.is_success() {
            let msg = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(format!("GET {path}: {status}: {msg}"));
        }
        Ok(body)
    }
}

/// A query value, every byte but the unreserved ones escaped (continue tokens are base64).
fn percent_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A kubectl-style pattern: `*` matches any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, rest)) => {
            name.starts_with(pre)
                && (0..=name.len() - pre.len()).any(|i| {
                    name.is_char_boundary(pre.len() + i) && matches(rest, &name[pre.len() + i..])
                })
        }
    }
}

fn discover_kinds(api: &Api, patterns: &[String], report: &mut ExportReport) -> Result<Vec<Kind>> {
    let mut kinds = Vec::new();
    let add = |list: &Value, kinds: &mut Vec<Kind>| {
        let gv = list
            .get("groupVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let group = gv.split_once('/').map(|(g, _)| g).unwrap_or("");
        for r in list
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
            let listable = r
                .get("verbs")
                .and_then(Value::as_array)
                .is_some_and(|v| v.iter().any(|x| x == "list"));
            if name.is_empty() || name.contains('/') || !listable {
                continue;
            }
            kinds.push(Kind {
                resource: if group.is_empty() {
                    name.to_owned()
                } else {
                    format!("{name}.{group}")
                },
                group_version: gv.clone(),
                kind: r
                    .get("kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                namespaced: r
                    .get("namespaced")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            });
        }
    };
    // The core group: without it nothing useful can be exported, so it is fatal.
    let core = api
        .get("/api/v1", &[])
        .map_err(|e| Error::Invalid(format!("Kubernetes API {}: {e}", api.access.server)))?;
    add(&core, &mut kinds);
    let groups = api
        .get("/apis", &[])
        .map_err(|e| Error::Invalid(format!("Kubernetes API {}: {e}", api.access.server)))?;
    for g in groups
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(gv) = g
            .get("preferredVersion")
            .and_then(|p| p.get("groupVersion"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let group = gv.split_once('/').map(|(g, _)| g).unwrap_or(gv);
        // A whole group excluded (`*.metrics.k8s.io`) is not even discovered: an aggregated
        // API that is down must not fail the export of what the user wants.
        if excluded_group(group, patterns) {
            continue;
        }
        match api.get(&format!("/apis/{gv}"), &[]) {
            Ok(list) => add(&list, &mut kinds),
            Err(e) => report.errors.push(format!("API group {gv}: {e}")),
        }
    }
    Ok(kinds)
}

fn excluded_group(group: &str, patterns: &[String]) -> bool {
    patterns
        .iter()
        .any(|p| p.strip_prefix("*.").is_some_and(|g| g == group))
}

/// Drop what the server sets, so that `kubectl apply` can create the object anew.
fn clean(obj: &mut Value) {
    if let Some(m) = obj.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "resourceVersion",
                "generation",
                "creationTimestamp",
                "selfLink",
                "managedFields",
            ] {
                meta.remove(k);
            }
        }
    }
}

/// Longest name used as a path segment: `<name>.yaml` must fit a file name (255 bytes).
const SEGMENT_MAX: usize = 250;

/// A name usable as one path segment.
fn segment(s: &str) -> Option<&str> {
    (!s.is_empty()
        && s.len() <= SEGMENT_MAX
        && s != "."
        && s != ".."
        && !s.contains('/')
        && !s.contains('\0'))
    .then_some(s)
}

/// Check that the API server answers and accepts these credentials (a dry run's check).
pub fn probe(access: &KubeAccess) -> Result<()> {
    Api::new(access, Duration::from_secs(30))?
        .get("/api/v1", &[])
        .map(|_| ())
        .map_err(|e| Error::Invalid(format!("Kubernetes API {}: {e}", access.server)))
}

/// Export every listable kind into `dir` (which must exist and be empty).
pub fn export(access: &KubeAccess, dir: &Path, opts: &ExportOptions) -> Result<ExportReport> {
    let api = Api::new(access, opts.timeout)?;
    let patterns: Vec<String> = DEFAULT_EXCLUDES
        .iter()
        .filter(|d| !opts.include.iter().any(|i| i == *d))
        .map(|d| (*d).to_owned())
        .chain(opts.exclude.iter().cloned())
        .collect();
    let mut report = ExportReport::default();
    let kinds = discover_kinds(&api, &patterns, &mut report)?;
    let limit = opts.page_size.max(1).to_string();
    let mut written: BTreeSet<PathBuf> = BTreeSet::new();
    for kind in &kinds {
        if patterns.iter().any(|p| matches(p, &kind.resource))
            && !opts.include.iter().any(|p| matches(p, &kind.resource))
        {
            report.excluded.push(kind.resource.clone());
            continue;
        }
        if crate::progress::interrupted() {
            return Err(Error::Interrupted);
        }
        let Some(file) = segment(&kind.resource) else {
            report
                .errors
                .push(format!("{:?}: an unusable resource name", kind.resource));
            continue;
        };
        let mut cont = String::new();
        // Every token of this kind: a server that cycles through tokens would list forever.
        let mut seen: HashSet<String> = HashSet::new();
        let mut failed = None;
        loop {
            // The run's deadline (and Ctrl-C) stop a listing between pages too.
            if crate::progress::interrupted() {
                return Err(Error::Interrupted);
            }
            let mut q = vec![("limit", limit.as_str())];
            if !cont.is_empty() {
                q.push(("continue", cont.as_str()));
            }
            let body = match api.get_bytes(&kind.list_path(), &q, MAX_RESPONSE) {
                Ok(b) => b,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let page = read_page(&body, kind, file, opts.raw, |rel, item| {
                let path = dir.join(rel);
                let first = written.insert(path.clone());
                let n = write_object(&path, &item, first)?;
                if let Some(p) = &opts.progress {
                    crate::Progress::add(&p.files, 1);
                    crate::Progress::add(&p.bytes, n);
                }
                Ok(())
            })?;
            report.objects += page.objects;
            if page.failed.is_some() {
                failed = page.failed;
            }
            let Some(next) = page.next else {
                break;
            };
            if next.is_empty() {
                break;
            }
            if !seen.insert(next.clone()) {
                failed = Some("the server returned a continue token a second time".into());
                break;
            }
            cont = next;
        }
        match failed {
            Some(e) => {
                report.errors.push(format!("{}: {e}", kind.resource));
                if let Some(p) = &opts.progress {
                    crate::Progress::add(&p.errors, 1);
                }
            }
            None => report.kinds += 1,
        }
    }
    report.files = written.len() as u64;
    Ok(report)
}

/// What one list page held.
struct PageOutcome {
    /// Objects handed to the writer.
    objects: u64,
    /// The continue token; `None` when the page could not be read, `Some("")` at the end.
    next: Option<String>,
    /// Objects (or the page) that could not be exported, with why.
    failed: Option<String>,
}

/// Read one list page of `kind` and hand each object to `write` with the file it belongs
/// in, relative to the export's directory (`<namespace>/<file>.yaml`). Items are parsed
/// one at a time out of `body` as the parser reaches them ([`PageReader`]): a page is held
/// once, as bytes, plus the one object being written (a parsed page of pods takes ~15 times
/// its JSON). Only `write`'s errors are errors; whatever the server sent is a failure of
/// this kind at worst (objects before a malformed part of the page are written).
fn read_page(
    body: &[u8],
    kind: &Kind,
    file: &str,
    raw: bool,
    mut write: impl FnMut(PathBuf, Value) -> Result<()>,
) -> Result<PageOutcome> {
    let mut out = PageOutcome {
        objects: 0,
        next: None,
        failed: None,
    };
    let mut stopped: Option<Error> = None;
    let mut cont = None;
    let mut each = |json: &serde_json::value::RawValue| -> bool {
        let mut item: Value = match serde_json::from_str(json.get()) {
            Ok(v) => v,
            Err(e) => {
                out.failed = Some(format!("an object that is not JSON: {e}"));
                return true;
            }
        };
        // List items carry no apiVersion/kind; `kubectl apply` needs both.
        if let Some(m) = item.as_object_mut() {
            m.insert(
                "apiVersion".into(),
                Value::String(kind.group_version.clone()),
            );
            m.insert("kind".into(), Value::String(kind.kind.clone()));
        }
        let folder = if kind.namespaced {
            let ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match segment(ns) {
                Some(ns) => ns.to_owned(),
                None => {
                    out.failed = Some(format!("an object with namespace {ns:?}"));
                    return true;
                }
            }
        } else {
            "_cluster".to_owned()
        };
        if !raw {
            clean(&mut item);
        }
        match write(Path::new(&folder).join(format!("{file}.yaml")), item) {
            Ok(()) => {
                out.objects += 1;
                true
            }
            Err(e) => {
                stopped = Some(e);
                false
            }
        }
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = serde::de::DeserializeSeed::deserialize(
        PageReader {
            each: &mut each,
            cont: &mut cont,
        },
        &mut de,
    )
    .and_then(|()| de.end());
    if let Some(e) = stopped {
        return Err(e);
    }
    match parsed {
        Ok(()) => out.next = Some(cont.unwrap_or_default()),
        Err(e) => out.failed = Some(format!("{}: not a list: {e}", kind.list_path())),
    }
    Ok(out)
}

/// Fuzz entry: any bytes as a page of pods. Never a panic; every object handed over goes
/// to a file one namespace deep, and its YAML reads back as exactly that object.
pub fn fuzz_list_page(data: &[u8]) {
    let kind = Kind {
        resource: "pods".into(),
        group_version: "v1".into(),
        kind: "Pod".into(),
        namespaced: true,
    };
    let _ = read_page(data, &kind, "pods", false, |rel, item| {
        let parts: Vec<_> = rel.components().collect();
        assert!(
            parts.len() == 2
                && parts
                    .iter()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
            "{rel:?}"
        );
        let yaml = to_yaml(&item);
        let back: Value = serde_yaml_ng::from_str(&yaml).expect("the export's YAML reads back");
        assert_eq!(back, item, "{yaml}");
        Ok(())
    });
}

/// Append `obj` to `path` as one YAML document; the bytes written.
fn write_object(path: &Path, obj: &Value, first: bool) -> Result<u64> {
    if first {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
    }
    let yaml = to_yaml(obj);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(b"---\n")
        .and_then(|_| f.write_all(yaml.as_bytes()))
        .map_err(|e| Error::io(path, e))?;
    Ok(4 + yaml.len() as u64)
}

/// `v` as a YAML document that YAML 1.1 parsers read back the same, as kubectl's does
/// (`sigs.k8s.io/yaml`): a string is written plain only when it cannot be read as anything
/// else (`no`, `on`, `0123`, `1:20` and the like are quoted), multi-line strings as literal
/// blocks (certificates and config files stay readable), anything unusual as a JSON string
/// (which is valid YAML).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => yaml_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => yaml_list(&mut out, a, 0),
        other => {
            // Indented: a literal block's lines at column 0 could read as `---`/`...`.
            yaml_scalar(&mut out, other, 2);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, n: usize) {
    out.extend(std::iter::repeat_n(' ', n));
}

/// Longest key written as an implicit `key: value`: YAML (libyaml, go-yaml) refuses simple
/// keys past 1024 bytes; longer ones get the explicit form (`? key` then `: value`).
const SIMPLE_KEY_MAX: usize = 1000;

fn yaml_map(out: &mut String, m: &serde_json::Map<String, Value>, ind: usize) {
    let mut key = String::new();
    for (i, (k, v)) in m.iter().enumerate() {
        // The first key of a map inside a list item follows its `- `.
        if i > 0 || !out.ends_with("- ") {
            indent(out, ind);
        }
        key.clear();
        yaml_string(&mut key, k, ind, true);
        if key.len() > SIMPLE_KEY_MAX {
            out.push_str("? ");
            out.push_str(&key);
            out.push('\n');
            indent(out, ind);
        } else {
            out.push_str(&key);
        }
        out.push(':');
        yaml_value(out, v, ind);
    }
}

fn yaml_list(out: &mut String, a: &[Value], ind: usize) {
    for v in a {
        indent(out, ind);
        out.push_str("- ");
        match v {
            Value::Object(m) if !m.is_empty() => yaml_map(out, m, ind + 2),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                yaml_list(out, inner, ind + 2);
            }
            other => {
                yaml_scalar(out, other, ind + 2);
                out.push('\n');
            }
        }
    }
}

/// After `key:`: a nested block on the next lines, or ` scalar`.
fn yaml_value(out: &mut String, v: &Value, ind: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            yaml_map(out, m, ind + 2);
        }
        // Lists under a key at the key's indentation, as kubectl writes them.
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            yaml_list(out, a, ind);
        }
        other => {
            out.push(' ');
            yaml_scalar(out, other, ind + 2);
            out.push('\n');
        }
    }
}

fn yaml_scalar(out: &mut String, v: &Value, ind: usize) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => yaml_string(out, s, ind, false),
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
    }
}

/// Words YAML 1.1 reads as booleans or null.
const YAML11_WORDS: &[&str] = &[
    "y", "yes", "n", "no", "true", "false", "on", "off", "null", "~",
];

fn yaml_string(out: &mut String, s: &str, ind: usize, key: bool) {
    let plain = s
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b'/')
        && s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./-".contains(&b))
        && !YAML11_WORDS.contains(&s.to_ascii_lowercase().as_str())
        // `.inf`/`.nan` start with a dot and are never plain; `e12`-like words are not
        // numbers without a leading digit.
        ;
    if plain {
        out.push_str(s);
        return;
    }
    let literal = !key
        && s.contains('\n')
        && !s.starts_with(' ')
        && !s.starts_with('\n')
        && s.chars().all(|c| c == '\n' || yaml_printable(c))
        && s.lines().all(|l| !l.ends_with(' '));
    if literal {
        let body = s.trim_end_matches('\n');
        let trailing = s.len() - body.len();
        out.push_str(match trailing {
            0 => "|-",
            1 => "|",
            _ => "|+",
        });
        for line in s[..body.len() + trailing.saturating_sub(1)].split('\n') {
            out.push('\n');
            if !line.is_empty() {
                indent(out, ind);
                out.push_str(line);
            }
        }
        return;
    }
    yaml_quoted(out, s);
}

/// Characters YAML lets stand as they are (its `c-printable`, less what libyaml turns into
/// line breaks or refuses: NEL, LS, PS, BOM).
fn yaml_printable(c: char) -> bool {
    matches!(c, '\u{20}'..='\u{7e}' | '\u{a0}'..='\u{2027}' | '\u{202a}'..='\u{d7ff}' | '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}' | '\u{10000}'..)
}

/// A YAML double-quoted scalar: every character that is not printable escaped.
fn yaml_quoted(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if yaml_printable(c) => out.push(c),
            c if (c as u32) <= 0xffff => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn round_trip(v: &Value) {
        let y = to_yaml(v);
        let back: Value = serde_yaml_ng::from_str(&y).unwrap_or_else(|e| panic!("{e}\n{y}"));
        assert_eq!(&back, v, "\n{y}");
    }

    #[test]
    fn yaml_reads_back_the_same_and_quotes_what_yaml_1_1_would_misread() {
        let v = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "labels": {"app.kubernetes.io/name": "web"}, "annotations": {}},
            "data": {"yes": "no", "on": "off", "n": "Y", "num": "0123", "time": "1:20",
                     "float": "1.5", "exp": "1e3", "empty": "", "space": " lead", "tilde": "~",
                     "cert": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                     "nofinal": "a\nb", "many": "a\n\n\n", "inner": "a\n\nb\n", "tab": "a\tb\nc",
                     "unicode": "grüße ✓", "quote": "it's \"x\"", "hash": "a #b", "dash": "- x"},
            "list": [1, -2.5, true, null, [], {}, [1, [2]], {"a": [{"b": "c"}]}, "- not a list"],
            "nested": [[{"k": "v", "l": [1]}]],
        });
        round_trip(&v);
        let y = to_yaml(&v);
        for quoted in [
            "\"yes\": \"no\"",
            "\"on\": \"off\"",
            "\"n\": \"Y\"",
            "num: \"0123\"",
            "time: \"1:20\"",
        ] {
            assert!(y.contains(quoted), "{quoted} not quoted:\n{y}");
        }
        assert!(
            y.contains("cert: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n"),
            "{y}"
        );
        for v in [
            Value::Null,
            serde_json::json!("x"),
            serde_json::json!([]),
            serde_json::json!({}),
        ] {
            round_trip(&v);
        }
    }

    #[test]
    fn keys_past_yaml_simple_key_limit_are_written_explicitly() {
        let long = "k".repeat(1500);
        let escaped = "\u{1}".repeat(200); // 1 200 bytes once escaped
        let v = serde_json::json!({
            "spec": {
                &long: 1,
                "short": "s",
                &escaped: {"inner": [1, {&long: "x"}]},
                "list": [{&long: [1, 2], "after": {}}, {&escaped: {}}],
            },
            &long: [],
        });
        round_trip(&v);
        let y = to_yaml(&v);
        if let Ok(f) = std::env::var("CAIRN_DUMP_YAML") {
            std::fs::write(f, &y).unwrap();
        }
        assert!(y.contains(&format!("? {long}\n")), "{y}");
        assert!(y.contains("  short: s\n"), "{y}");
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[ -~\n\t\r\u{e9}\u{2713}\u{85}\u{9f}\u{2028}\u{2029}\u{feff}\u{7f}\u{1}\u{1f600}]{0,12}".prop_map(Value::String),
            prop::sample::select(vec![
                "yes", "No", "ON", "0x1F", "1:20", "-", "?", "- a", "a: b", "'", "#", "0o7",
                ".inf", "1_000", "null", "~", "=", "<<"
            ])
            .prop_map(|s| Value::String(s.to_owned())),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z0-9 :.#-]{0,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]
        #[test]
        fn any_json_round_trips_through_yaml(v in arb_json()) {
            let y = to_yaml(&v);
            let back: Value = serde_yaml_ng::from_str(&y).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}\n{y}")))?;
            proptest::prop_assert_eq!(back, v, "{}", y);
        }
    }

    #[test]
    fn patterns() {
        assert!(matches("events", "events"));
        assert!(!matches("events", "events.events.k8s.io"));
        assert!(matches("*.metrics.k8s.io", "pods.metrics.k8s.io"));
        assert!(matches("*", "anything"));
        assert!(matches("*.cattle.io", "helmcharts.helm.cattle.io"));
        assert!(!matches("*.cattle.io", "secrets"));
        assert!(excluded_group(
            "metrics.k8s.io",
            &["*.metrics.k8s.io".into()]
        ));
    }

    #[test]
    fn cleaning_keeps_what_apply_needs() {
        let mut v: Value = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "b", "uid": "u", "resourceVersion": "9",
                         "managedFields": [], "labels": {"x": "y"}},
            "data": {"k": "v"}, "status": {}
        });
        clean(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "a", "namespace": "b", "labels": {"x": "y"}},
                "data": {"k": "v"}})
        );
    }

    #[test]
    fn a_page_is_read_object_by_object() {
        let kind = Kind {
            resource: "pods".into(),
            group_version: "v1".into(),
            kind: "Pod".into(),
            namespaced: true,
        };
        let read = |body: &str| {
            let mut got = Vec::new();
            let out = read_page(body.as_bytes(), &kind, "pods", false, |rel, item| {
                got.push((rel, item));
                Ok(())
            })
            .unwrap();
            (out, got)
        };
        let (out, got) = read(
            r#"{"metadata":{"continue":"MTA="},"items":[{"metadata":{"name":"a","namespace":"shop","uid":"u"},"status":{}},{"metadata":{"name":"b","namespace":"../etc"}},{"metadata":{"name":"c"}},{"metadata":{"name":"d","namespace":"kube-system"}}]}"#,
        );
        assert_eq!(out.objects, 2);
        assert_eq!(out.next.as_deref(), Some("MTA="));
        assert!(out.failed.unwrap().contains("namespace"));
        assert_eq!(got[0].0, Path::new("shop/pods.yaml"));
        assert_eq!(
            got[0].1,
            serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "shop"}})
        );
        assert_eq!(got[1].0, Path::new("kube-system/pods.yaml"));
        // The last page: no token; null items and metadata are an empty last page.
        let (out, got) = read(r#"{"metadata":null,"items":null}"#);
        assert_eq!(
            (out.objects, out.next.as_deref(), got.len()),
            (0, Some(""), 0)
        );
        // Not a list: a failure of the kind, and no next page.
        let (out, _) = read("<html>");
        assert!(out.next.is_none() && out.failed.unwrap().contains("not a list"));
        // A second `metadata` (without the token) does not end the listing as a success.
        let (out, _) = read(r#"{"metadata":{"continue":"abc"},"items":[],"metadata":{}}"#);
        assert!(out.next.is_none() && out.failed.unwrap().contains("duplicate field"));
    }

    #[test]
    fn kubeconfig_with_a_credential_plugin_is_refused_by_name() {
        let text = "apiVersion: v1\nclusters:\n- cluster:\n    server: https://10.0.0.1:6443\n  name: c\ncontexts:\n- context:\n    cluster: c\n    user: u\n  name: x\ncurrent-context: x\nusers:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: aws\n";
        let e = KubeAccess::from_kubeconfig_bytes(text.as_bytes(), Path::new("/k"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`exec` plugin"), "{e}");
        // A token beside a plugin is enough.
        let with_token = text.replace("    exec:", "    token: abc\n    exec:");
        let a = KubeAccess::from_kubeconfig_bytes(with_token.as_bytes(), Path::new("/k")).unwrap();
        assert_eq!(a.token.as_deref(), Some("abc"));
    }

    #[test]
    fn kubeconfig_with_embedded_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k3s.yaml");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &p,
            format!(
                "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://127.0.0.1:6443\n  name: default\ncontexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\nkind: Config\npreferences: {{}}\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
                b64("CA"), b64("CERT"), b64("KEY")
            ),
        )
        .unwrap();
        let a = KubeAccess::from_kubeconfig(&p).unwrap();
        assert_eq!(a.server, "https://127.0.0.1:6443");
        assert_eq!(a.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert_eq!(a.identity_pem.as_deref(), Some(&b"CERT\nKEY"[..]));
        assert!(a.token.is_none());
    }
}
