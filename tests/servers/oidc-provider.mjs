// A real OpenID Provider for the identity tests: panva's oidc-provider (a certified OP
// implementation) shaped like one IdP — its issuer path, the audience of its access tokens,
// its signing algorithm and where it puts a user's groups. Loopback only.
//
//   node oidc-provider.mjs '<shape as JSON>'
//
// shape: {port, issuer, issuer_path, client_id, redirect_uri, alg,
//         resources: {<resource indicator>: <audience of its access tokens>},
//         accounts: {<login>: {<claims added to that user's access tokens>}}}
// Users sign in through the provider's own login and consent pages (any password): the tests
// drive the authorization code flow with PKCE over HTTP, as an MCP client's browser would.
// Prints "oidc-provider ready <issuer>" once it listens.
import { createRequire } from "node:module";

// The packages live in .tools/npm (scripts/setup.sh), not next to this file.
const require = createRequire(new URL("../../.tools/npm/package.json", import.meta.url));
const express = require("express");
const { exportJWK, generateKeyPair } = require("jose");
const Provider = require("oidc-provider").default;

const shape = JSON.parse(process.argv[2]);
const issuer = shape.issuer;

const { privateKey } = await generateKeyPair(shape.alg, { extractable: true });
const jwk = { ...(await exportJWK(privateKey)), kid: `${shape.alg.toLowerCase()}-1`, alg: shape.alg, use: "sig" };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: shape.client_id,
      application_type: "native", // a public client on loopback, like an MCP client
      token_endpoint_auth_method: "none",
      redirect_uris: [shape.redirect_uri],
      grant_types: ["authorization_code"],
      response_types: ["code"],
      id_token_signed_response_alg: shape.alg,
    },
  ],
  jwks: { keys: [jwk] },
  cookies: { keys: ["oidc-provider-test-cookie-key"] },
  async findAccount(_ctx, id) {
    if (!(id in shape.accounts)) return undefined; // an unknown login gets no token
    return { accountId: id, async claims() { return { sub: id }; } };
  },
  // Where this IdP puts the user's groups (`groups`, `roles`, `realm_access.roles`, …).
  async extraTokenClaims(_ctx, token) {
    return shape.accounts[token.accountId] ?? {};
  },
  features: {
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => Object.keys(shape.resources)[0],
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, indicator) => {
        const audience = shape.resources[indicator];
        if (audience === undefined) throw new Error(`unknown resource ${indicator}`);
        return {
          scope: "mcp",
          audience,
          accessTokenFormat: "jwt",
          accessTokenTTL: 600,
          jwt: { sign: { alg: shape.alg } },
        };
      },
    },
  },
  pkce: { required: () => true },
});

const app = express();
app.use(shape.issuer_path, provider.callback());
app.listen(shape.port, "127.0.0.1", () => console.log(`oidc-provider ready ${issuer}`));
