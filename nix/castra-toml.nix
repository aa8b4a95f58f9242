# Render a castra.toml from a Nix attribute set (pure; builtins only, so it
# evaluates without nixpkgs: scripts/check-nix.sh runs it with Debian's
# nix-instantiate and feeds the result to the real `castra plan`).
#
#   toCastraToml {
#     project = { name = "demo"; };
#     vms = [ { name = "web"; memory = "1G"; image = { kernel = "/k"; }; } ];
#     broker = { port = 7750; };
#   }
#
# `project`, `broker` and `lifecycle` become tables, each entry of `vms` a
# `[[vms]]` table; nested attribute sets (such as `image`) become inline
# tables. Keys keep their Nix names, so they must be castra.toml's keys
# (docs/CONFIG.md); castra itself rejects unknown keys. It does not validate
# values: castra does that when it loads the file.
let
  inherit (builtins)
    attrNames concatStringsSep isAttrs isBool isInt isList isString map replaceStrings typeOf;

  quote = s: ''"${replaceStrings [ "\\" "\"" "\n" "\t" ] [ "\\\\" "\\\"" "\\n" "\\t" ] s}"'';

  # Bare keys are [A-Za-z0-9_-]+; anything else is quoted.
  key = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else quote k;

  value = v:
    if isString v then quote v
    else if isBool v then (if v then "true" else "false")
    else if isInt v then toString v
    else if isList v then "[${concatStringsSep ", " (map value v)}]"
    else if isAttrs v then
      "{ ${concatStringsSep ", " (map (k: "${key k} = ${value v.${k}}") (attrNames v))} }"
    else throw "castra-toml: cannot render a ${typeOf v} (strings, ints, bools, lists and attribute sets only)";

  # `attrNames` sorts keys; castra.toml does not care about key order, and
  # a stable order keeps the rendered file reproducible.
  body = attrs: concatStringsSep "" (map (k: "${key k} = ${value attrs.${k}}\n") (attrNames attrs));

  table = name: attrs: "[${name}]\n${body attrs}";

  known = [ "project" "vms" "broker" "lifecycle" ];
in
config:
let
  unknown = builtins.filter (k: !(builtins.elem k known)) (attrNames config);
  sections =
    (if config ? project then [ (table "project" config.project) ] else [ ])
    ++ map (vm: "[[vms]]\n${body vm}") (config.vms or [ ])
    ++ (if config ? broker then [ (table "broker" config.broker) ] else [ ])
    ++ (if config ? lifecycle then [ (table "lifecycle" config.lifecycle) ] else [ ]);
in
if unknown != [ ] then
  throw "castra-toml: unknown top-level section(s) ${concatStringsSep ", " unknown} (expected ${concatStringsSep ", " known})"
else
  concatStringsSep "\n" sections
