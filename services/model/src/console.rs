//! Console tickets: what `POST /api/v1/vms/{name}/console` takes and answers (the API
//! serves the consoles over WebSockets; see keeld's console module).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Which console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleKind {
    /// The first serial port (ttyS0), as a byte stream.
    Serial,
    /// The graphical display, as RFB (VNC) in binary frames (noVNC-compatible).
    Vnc,
}

impl ConsoleKind {
    /// The path segment and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleKind::Serial => "serial",
            ConsoleKind::Vnc => "vnc",
        }
    }
}

/// Body of `POST /api/v1/vms/{name}/console` (optional: without it the ticket opens either
/// console).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleTicketRequest {
    /// Bind the ticket to this console only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ConsoleKind>,
}

/// A console ticket: pass it as `?ticket=` when opening the WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConsoleTicket {
    /// The ticket (opaque; single use).
    pub ticket: String,
    /// The console it opens; absent: either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ConsoleKind>,
    /// When it stops being accepted (RFC 3339).
    pub expires_at: String,
    /// Path of the serial console WebSocket, ticket included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_url: Option<String>,
    /// Path of the VNC WebSocket (subprotocol `binary`), ticket included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnc_url: Option<String>,
}
