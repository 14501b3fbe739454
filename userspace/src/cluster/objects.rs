//! What the watches hold (the cluster's objects at one moment) and what floodgate says of an
//! object it could not use. Both are plain data shared by the translation (`translate.rs`,
//! `gateway.rs`, `resolve.rs`), the watches and the status writer, so none of those needs
//! another to name them.

use std::sync::Arc;

use gateway_api::{
    gatewayclasses::GatewayClass, gateways::Gateway, grpcroutes::GrpcRoute, httproutes::HttpRoute,
    referencegrants::ReferenceGrant,
};
use k8s_openapi::api::{
    core::v1::{ConfigMap, Secret, Service},
    discovery::v1::EndpointSlice,
    networking::v1::{Ingress, IngressClass},
};

/// The objects the watches hold at one moment.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub classes: Vec<Arc<IngressClass>>,
    pub ingresses: Vec<Arc<Ingress>>,
    pub services: Vec<Arc<Service>>,
    pub slices: Vec<Arc<EndpointSlice>>,
    pub secrets: Vec<Arc<Secret>>,
    /// The settings ConfigMap, when `kubernetes.settings` names one and it exists.
    pub settings: Option<Arc<ConfigMap>>,
    /// The Gateway API's objects (none when its CRDs are not installed).
    pub gateway: GatewayObjects,
}

/// An object floodgate could not use, or used only in part, and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub reason: String,
    /// True when the object is not served at all; false when it is served without the part
    /// named (an unsupported annotation, a missing Secret).
    pub rejected: bool,
}

/// The Gateway API objects the watches hold.
#[derive(Debug, Clone, Default)]
pub struct GatewayObjects {
    pub classes: Vec<Arc<GatewayClass>>,
    pub gateways: Vec<Arc<Gateway>>,
    pub routes: Vec<Arc<HttpRoute>>,
    pub grpc_routes: Vec<Arc<GrpcRoute>>,
    pub grants: Vec<Arc<ReferenceGrant>>,
}
