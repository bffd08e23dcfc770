import FoundationEssentials

// The JSON of etcd's v3 gateway: bytes are base64, 64-bit integers are strings, and fields
// with their zero value are left out.

/// A 64-bit integer as the gateway writes it: a string (a number is taken too).
struct GatewayInt: Codable, Sendable, Hashable {
    var value: Int64

    init(_ value: Int64) {
        self.value = value
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self), let value = Int64(text) {
            self.value = value
        } else {
            self.value = try container.decode(Int64.self)
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(String(self.value))
    }
}

/// Bytes as the gateway writes them: base64.
struct GatewayBytes: Codable, Sendable, Hashable {
    var bytes: [UInt8]

    init(_ text: String) {
        self.bytes = Array(text.utf8)
    }

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    var text: String { String(decoding: self.bytes, as: UTF8.self) }

    init(from decoder: any Decoder) throws {
        let encoded = try decoder.singleValueContainer().decode(String.self)
        guard let data = Data(base64Encoded: encoded) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not base64"))
        }
        self.bytes = Array(data)
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(Data(self.bytes).base64EncodedString())
    }
}

struct LeaseGrantRequest: Encodable {
    var TTL: GatewayInt
}

struct LeaseGrantResponse: Decodable, Sendable {
    var ID: GatewayInt?
    var TTL: GatewayInt?
    var error: String?
}

struct LeaseIDRequest: Encodable {
    var ID: GatewayInt
}

/// `/v3/lease/keepalive` answers like a stream: `{"result": {...}}`.
struct LeaseKeepAliveAnswer: Decodable, Sendable {
    struct Result: Decodable, Sendable {
        var ID: GatewayInt?
        var TTL: GatewayInt?
    }

    var result: Result?
}

struct Empty: Codable, Sendable {}

/// The key a campaign made: what names a leadership.
struct LeaderKey: Codable, Sendable, Hashable {
    var name: GatewayBytes
    var key: GatewayBytes
    var rev: GatewayInt
    var lease: GatewayInt
}

struct CampaignRequest: Encodable {
    var name: GatewayBytes
    var lease: GatewayInt
    var value: GatewayBytes
}

struct CampaignResponse: Decodable, Sendable {
    var leader: LeaderKey?
}

struct ElectionNameRequest: Encodable {
    var name: GatewayBytes
}

struct KeyValue: Decodable, Sendable {
    var key: GatewayBytes?
    var value: GatewayBytes?
    var create_revision: GatewayInt?
    var lease: GatewayInt?
}

/// `/v3/election/leader` answers `{"kv": {...}}`.
struct LeaderResponse: Decodable, Sendable {
    var kv: KeyValue?
}

/// `/v3/election/observe` streams `{"result": {"kv": {...}}}`.
struct ObserveAnswer: Decodable, Sendable {
    var result: LeaderResponse?
}
