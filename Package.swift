// swift-tools-version:6.0
import PackageDescription

/// Ferry: a data-transfer and storage fabric for a supercomputing internet.
/// Dependencies flow one way: CLI → Daemon → GlobalFS → Storage, Transfer → C modules (CAEAD
/// → swift-nio-ssl's BoringSSL).
let package = Package(
    name: "Ferry",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "ferry", targets: ["CLI"]),
        .library(name: "Transfer", targets: ["Transfer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        // Already under HummingbirdTLS; named for the API's certificate reload (SIGHUP) and for
        // CAEAD, which includes its vendored BoringSSL's headers (not its API: hence the minor pin).
        .package(url: "https://github.com/apple/swift-nio-ssl", .upToNextMinor(from: "2.37.6")),
        // Already under Hummingbird; named for the request parts a channel handler of the API
        // sees (NIOHTTPTypes: `RequestDeadline`).
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
    ],
    targets: [
        // System-library shims: each a tiny C target that includes the Debian header and
        // exposes what Swift cannot import directly (macros, variadic syscalls).
        .target(name: "CLiburing", linkerSettings: [.linkedLibrary("uring")]),
        .target(name: "CZstd", linkerSettings: [.linkedLibrary("zstd")]),
        .target(name: "CXXHash"),
        // The commit and date of a release build (scripts/package.sh), for `ferry --version`.
        .target(name: "CBuildInfo"),
        .target(name: "COpenSSL", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        // The data streams' AES-256-GCM, from the BoringSSL that swift-nio-ssl vendors (its VAES
        // code, which Debian's OpenSSL 3.0 lacks; Sources/CAEAD/shim.c). Its symbols carry
        // swift-nio-ssl's prefix, so they never meet OpenSSL's.
        .target(name: "CAEAD", dependencies: [.product(name: "NIOSSL", package: "swift-nio-ssl")]),
        .target(
            name: "Transfer",
            dependencies: ["CLiburing", "CZstd", "CXXHash", "COpenSSL", "CAEAD"]
        ),
        // The storage the catalog and the daemon's job queue share: one small SQL interface over
        // SQLite (GRDB) or PostgreSQL (postgres-nio).
        .target(
            name: "Storage",
            dependencies: [
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // The catalog (Global Files) and the staging cache, on Storage.
        .target(
            name: "GlobalFS",
            dependencies: [
                "Transfer",
                "Storage",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // The center's service: persistent job queue, runner, API.
        .target(
            name: "Daemon",
            dependencies: [
                "Transfer",
                "GlobalFS",
                "Storage",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
            ],
            resources: [
                // The web console's files, in the binary (Sources/Daemon/HTTP/Console.swift).
                .embedInCode("Console/index.html"), .embedInCode("Console/console.js"), .embedInCode("Console/console.css"),
                .embedInCode("Console/i18n/en.json"), .embedInCode("Console/i18n/zh-CN.json"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "CLI",
            dependencies: ["Transfer", "GlobalFS", "Daemon", "CBuildInfo", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "Logging", package: "swift-log")]
        ),
        .testTarget(name: "TransferTests", dependencies: ["Transfer"]),
        .testTarget(name: "EndToEndTests", dependencies: ["Transfer", "TestSupport"]),
        // Shared by the test targets: the storage engines to run against (a real PostgreSQL).
        .target(name: "TestSupport", path: "Tests/TestSupport"),
        .testTarget(name: "DaemonTests", dependencies: ["Daemon", "GlobalFS", "Storage", "Transfer", "TestSupport"]),
        .testTarget(name: "GlobalFSTests", dependencies: ["GlobalFS", "Storage", "Transfer", "TestSupport"]),
    ],
    swiftLanguageModes: [.v5]
)
