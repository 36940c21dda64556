//! Test certificates made with the openssl CLI (Debian package openssl).

/// Makes a CA, a server certificate for 127.0.0.1 and two client certificates (one from another
/// CA) with the openssl CLI, in `dir`.
pub fn make_certs(dir: &std::path::Path) {
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl) is needed for the TLS tests");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    for ca in ["ca", "other-ca"] {
        sh(&format!(
            "openssl req -x509 {key} -keyout {ca}.key -out {ca}.pem -days 2 -subj /CN={ca}"
        ));
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("rogue", "other-ca", "client.ext"),
    ] {
        sh(&format!(
            "openssl req {key} -keyout {name}.key -out {name}.csr -subj /CN={name} && \
             openssl x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial \
               -out {name}.pem -days 2 -extfile {ext}"
        ));
    }
}
