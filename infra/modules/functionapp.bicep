// The Function App that runs the `handler` binary as a custom handler, on a Flex Consumption
// (FC1) plan. It has a system-assigned identity and reaches storage and Key Vault with it
// (roles.bicep); no storage key or ClickHouse password is in its settings.

@description('Azure region. Flex Consumption must be available there for the custom runtime (az functionapp list-flexconsumption-runtimes --location <region> --runtime custom).')
param location string

@description('Function App name (globally unique; it becomes <name>.azurewebsites.net).')
param name string

@description('Flex Consumption plan name.')
param planName string

@description('The storage account of the host, the deployment package and the spool (storage.bicep).')
param storageAccountName string

@description('Blob container holding the deployment package.')
param deploymentContainerName string

@description('The spool queue (and blob container) name; functions/ingest_replay/function.json names the same queue.')
param spoolQueueName string

@description('Application Insights component (monitoring.bicep).')
param appInsightsName string

@description('Key Vault URI with its trailing slash (keyvault.bicep).')
param keyVaultUri string

@description('Name of the vault secret holding the ClickHouse password.')
param clickhousePasswordSecretName string

@description('Name of the vault secret holding the spool signing key.')
param spoolKeySecretName string

@description('ClickHouse HTTP(S) interface, e.g. https://abc123.eastus2.azure.clickhouse.cloud:8443.')
param clickhouseUrl string

@description('The handler\'s ClickHouse login.')
param clickhouseUser string

@description('The ClickHouse database the endpoints\' SQL reads.')
param clickhouseDatabase string

@description('The Entra tenant that issues the API\'s tokens.')
param entraTenantId string

@description('Token audiences the handler accepts: the API\'s Application ID URI and its client id.')
param apiAudiences array

@description('Most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 100

@description('Memory of each instance, in MB.')
@allowed([ 512, 2048, 4096 ])
param instanceMemoryMB int = 2048

param tags object = {}

resource storage 'Microsoft.Storage/storageAccounts@2025-01-01' existing = {
  name: storageAccountName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// Without a trailing slash, as the spool settings expect.
var blobServiceUri = 'https://${storage.name}.blob.${environment().suffixes.storage}'
var queueServiceUri = 'https://${storage.name}.queue.${environment().suffixes.storage}'

// Flex Consumption takes the runtime from functionAppConfig.runtime below, so the runtime,
// extension-version and run-from-package settings that other plans need are not set: Flex
// refuses them.
//
// Read by the handler with a default, so optional, see docs/operations.md (add one here only
// to change it):
//   CHGATE_REQUEST_TIMEOUT_SECONDS            request deadline, 1 to 230 (default 60)
//   CHGATE_MAX_INFLIGHT_QUERIES               the instance's bound on ClickHouse queries (access.toml [limits])
//   CHGATE_RESPONSE_BUFFER_BYTES              result bytes held back before the status is sent
//   CHGATE_SECRETS_REFRESH_SECONDS            how often the vault is re-read (default 300)
//   CHGATE_BREAKER_FAILURES                   failures that open the circuit (default 5)
//   CHGATE_BREAKER_COOLDOWN_SECONDS           how long it stays open (default 5)
//   CHGATE_CACHE_MAX_BYTES                    the result cache's size
//   CHGATE_CACHE_MAX_ENTRY_BYTES              larger results stream and are not cached
//   CHGATE_TOKEN_SKEW_SECONDS                 clock skew allowed on token times (default 60)
//   CHGATE_JWKS_MIN_REFRESH_SECONDS           least time between key refreshes (default 30)
//   CHGATE_KEYVAULT_CREDENTIAL                managed-identity in Azure (the default there)
//   CHGATE_KEYVAULT_CA_FILE                   extra CA certificates for a vault behind a private CA
//   CHGATE_CLICKHOUSE_USER_SECRET             a vault secret holding the login's user name
//   CHGATE_TELEMETRY_SPAN_DELAY_MS            how often buffered spans are sent (default 5000)
//   CHGATE_TELEMETRY_METRIC_INTERVAL_SECONDS  how often metrics are sent (default 60)
//   CHGATE_FUNCTIONS_DIR                      the folder of function folders (the app root here)
//   CHGATE_HOST_JSON                          where the route prefix is read (host.json)
//   CHGATE_ACCESS_POLICY                      the access policy file (access.toml)
//   RUST_LOG                                  log filter (default info)
//   AZURE_CLIENT_ID                           a user-assigned identity's client id (this app uses its system-assigned one)
//   CHGATE_SPOOL__clientId                    the same, for the spool only
//   role password settings                    whatever access.toml's password_setting names (unused with a vault)
//
// Deliberately not set:
//   CLICKHOUSE_PASSWORD       the password is read from the vault (CHGATE_KEYVAULT_URL) and
//                             re-read by the handler, so a rotation needs no restart; a copy
//                             in a setting would not follow a rotation.
//   CHGATE_SPOOL              the connection-string form of the spool (SAS), for local runs.
//   CHGATE_ALLOW_DEV_ISSUERS  development issuers are never trusted in Azure.
//
// Set by the platform and read by the handler: FUNCTIONS_CUSTOMHANDLER_PORT (the host),
// WEBSITE_SITE_NAME, IDENTITY_ENDPOINT and IDENTITY_HEADER (the managed identity endpoint).
var hostSettings = [
  { name: 'AzureWebJobsStorage__accountName', value: storage.name }
  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }
]

var appSettings = [
  // The host's own storage (keys, locks, trigger state), identity-based: no account key.
  { name: 'AzureWebJobsStorage__accountName', value: storage.name }

  { name: 'APPLICATIONINSIGHTS_CONNECTION_STRING', value: appInsights.properties.ConnectionString }

  { name: 'CLICKHOUSE_URL', value: clickhouseUrl }
  { name: 'CLICKHOUSE_USER', value: clickhouseUser }
  { name: 'CLICKHOUSE_DATABASE', value: clickhouseDatabase }

  // The password is read by the handler from the vault with the managed identity, at start,
  // every CHGATE_SECRETS_REFRESH_SECONDS and when ClickHouse refuses the login.
  { name: 'CHGATE_KEYVAULT_URL', value: keyVaultUri }
  { name: 'CHGATE_CLICKHOUSE_PASSWORD_SECRET', value: clickhousePasswordSecretName }

  // access.toml's `entra` issuer, pinned to this tenant. The v1 issuer form is accepted
  // because client-credential and managed-identity tokens are often v1.
  { name: 'CHGATE_ISSUER__ENTRA__URL', value: '${environment().authentication.loginEndpoint}${entraTenantId}/v2.0' }
  { name: 'CHGATE_ISSUER__ENTRA__ALSO_ACCEPT', value: 'https://sts.windows.net/${entraTenantId}/' }
  { name: 'CHGATE_ISSUER__ENTRA__AUDIENCES', value: join(apiAudiences, ',') }

  // The ingest spool, identity-based. The queue trigger of functions/ingest_replay reads the
  // same CHGATE_SPOOL connection prefix.
  { name: 'CHGATE_SPOOL__queueServiceUri', value: queueServiceUri }
  { name: 'CHGATE_SPOOL__blobServiceUri', value: blobServiceUri }
  { name: 'CHGATE_SPOOL_QUEUE', value: spoolQueueName }
  // Resolved by the platform with the app's identity; versionless, so a new version is
  // picked up within a day, or at once when the app settings change. It must stay the same on every instance.
  { name: 'CHGATE_SPOOL_KEY', value: '@Microsoft.KeyVault(SecretUri=${keyVaultUri}secrets/${spoolKeySecretName}/)' }
]

resource plan 'Microsoft.Web/serverfarms@2025-03-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2025-03-01' = {
  name: name
  location: location
  // azd finds the app to deploy the `api` service to through this tag.
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      // Only what the host needs to start. The handler's settings come with appsettings.bicep
      // once the identity holds its roles: the platform resolves a Key Vault reference when
      // the settings change, so settings written before the role exists would keep an
      // unresolved reference for up to a day (and the handler refuses one).
      appSettings: hostSettings
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      // host.json's customHandler starts `handler`; no language worker.
      runtime: {
        name: 'custom'
        version: '1.0'
      }
    }
  }
}

@description('Every app setting, name to value, for appsettings.bicep (no secret values: the secrets are Key Vault references).')
output appSettings object = toObject(appSettings, setting => setting.name, setting => setting.value)

output name string = site.name
output id string = site.id
output principalId string = site.identity.principalId
output defaultHostName string = site.properties.defaultHostName
