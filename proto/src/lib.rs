//! The `inferenceguard.v1` protobuf API: messages, tonic clients and servers,
//! and the encoded descriptor set that servers expose through gRPC reflection.
//!
//! The `.proto` sources in `proto/inferenceguard/v1/` are the contract; this
//! crate only compiles them. See `proto/README.md` for the conventions.

#![allow(missing_docs, clippy::all)] // generated code; the .proto files carry the docs

/// Version 1 of the API (`package inferenceguard.v1`).
pub mod v1 {
    tonic::include_proto!("inferenceguard.v1");
}

/// Encoded `FileDescriptorSet` of every `inferenceguard.v1` file, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("inferenceguard_v1_descriptor");

/// The encoded `FileDescriptorSet` of only the files that define `services`
/// (full names, such as `inferenceguard.v1.PolicyService`) and the files they
/// import: what one role's reflection may describe. A policy server then
/// resolves no symbol of the scorer's or critic's API; the guard's file
/// imports every role's messages, so the guard describes them all.
pub fn file_descriptor_set_for(services: &[&str]) -> Result<Vec<u8>, prost::DecodeError> {
    use prost::Message;
    let all = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET)?;
    let defines = |f: &prost_types::FileDescriptorProto| {
        f.service.iter().any(|s| services.iter().any(|&want| want == format!("{}.{}", f.package(), s.name())))
    };
    let mut wanted: Vec<String> = all.file.iter().filter(|f| defines(f)).map(|f| f.name().to_string()).collect();
    let mut next = 0;
    while let Some(name) = wanted.get(next).cloned() {
        if let Some(file) = all.file.iter().find(|f| f.name() == name) {
            for dep in &file.dependency {
                if !wanted.contains(dep) {
                    wanted.push(dep.clone());
                }
            }
        }
        next += 1;
    }
    let file = all.file.into_iter().filter(|f| wanted.iter().any(|w| w == f.name())).collect();
    Ok(prost_types::FileDescriptorSet { file }.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn files(services: &[&str]) -> Vec<String> {
        let set = prost_types::FileDescriptorSet::decode(file_descriptor_set_for(services).unwrap().as_slice()).unwrap();
        let mut names: Vec<String> = set.file.into_iter().map(|f| f.name().to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn each_role_describes_its_own_files_and_their_imports() {
        assert_eq!(files(&["inferenceguard.v1.PolicyService"]), ["inferenceguard/v1/common.proto", "inferenceguard/v1/policy.proto"]);
        assert_eq!(files(&["inferenceguard.v1.ScorerService"]), ["inferenceguard/v1/scorer.proto"]);
        assert_eq!(files(&["inferenceguard.v1.GuardService"]).len(), 5, "the guard imports every role's file");
        assert!(files(&["inferenceguard.v1.NoSuchService"]).is_empty());
    }
}
