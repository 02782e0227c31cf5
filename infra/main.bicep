// chgate on Azure: a Function App (Flex Consumption) running the Rust custom handler, behind
// API Management, with its storage, Key Vault and Application Insights. docs/deploy.md walks
// through a first deployment; docs/apim.md explains the gateway's policy.
//
//   azd up                                    (parameters from main.parameters.json)
//   az deployment group create -g <rg> -f infra/main.bicep -p <name>=<value> ...

targetScope = 'resourceGroup'

@description('Name of the environment (azd\'s AZURE_ENV_NAME), e.g. dev or prod; part of every resource name.')
@minLength(1)
@maxLength(32)
param environmentName string

@description('Short prefix of resource names: lowercase letters and digits, starting with a letter.')
@minLength(2)
@maxLength(8)
param namePrefix string = 'chgate'

@description('Azure region of every resource.')
param location string = resourceGroup().location

// The v2 tiers and the classic tiers other than Consumption support what the policy uses:
// rate-limit-by-key and the internal cache (quota-by-key only in the classic tiers; apim.bicep
// leaves it out on v2). Consumption lacks rate-limit-by-key, quota-by-key and the internal
// cache, so policies/api.xml needs changes before it can run there (docs/apim.md).
@description('API Management tier.')
@allowed([ 'BasicV2', 'StandardV2', 'PremiumV2', 'Developer', 'Basic', 'Standard', 'Premium', 'Consumption' ])
param apimSku string = 'BasicV2'

@description('API Management publisher e-mail.')
param publisherEmail string

@description('API Management publisher name.')
param publisherName string

@description('The Entra tenant that issues the API\'s tokens. Empty means the tenant of this subscription.')
param entraTenantId string = tenant().tenantId

@description('The API app registration\'s Application ID URI, e.g. api://chgate.')
param apiAudience string

@description('The API app registration\'s client (application) id. v2 access tokens carry it as their audience.')
param apiClientId string

@description('The origin browsers may call the gateway from, or * for any.')
param corsAllowedOrigin string = '*'

@description('The API\'s path on the gateway.')
param apiPath string = 'chgate'

@description('ClickHouse HTTP(S) interface, e.g. https://abc123.eastus2.azure.clickhouse.cloud:8443.')
param clickhouseUrl string

@description('The handler\'s ClickHouse login (docs/security.md creates chgate_app).')
param clickhouseUser string = 'chgate_app'

@description('The ClickHouse database the endpoints read.')
param clickhouseDatabase string = 'default'

@description('The ClickHouse login\'s password, stored in Key Vault. Empty leaves the vault\'s secret as it is (after a rotation, or when it is set by hand).')
@secure()
param clickhousePassword string = ''

@description('A random secret of at least 32 characters that signs spooled ingest batches (CHGATE_SPOOL_KEY), stored in Key Vault.')
@secure()
@minLength(32)
param spoolSigningKey string

@description('Who may manage the vault\'s secrets (the rotation runbook): azd passes the signed-in user. Empty grants nobody.')
param operatorPrincipalId string = ''

@description('The operator\'s principal type.')
@allowed([ 'User', 'Group', 'ServicePrincipal' ])
param operatorPrincipalType string = 'User'

var tenantId = empty(entraTenantId) ? tenant().tenantId : entraTenantId
var token = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = {
  'azd-env-name': environmentName
  application: 'chgate'
}
var names = {
  logAnalytics: '${namePrefix}-log-${token}'
  appInsights: '${namePrefix}-appi-${token}'
  storage: take(toLower(replace('st${namePrefix}${token}', '-', '')), 24)
  keyVault: take('kv-${namePrefix}-${token}', 24)
  plan: '${namePrefix}-plan-${token}'
  functionApp: '${namePrefix}-func-${token}'
  apim: '${namePrefix}-apim-${token}'
}
// The names the handler's settings refer to.
var clickhousePasswordSecretName = 'clickhouse-password'
var spoolKeySecretName = 'chgate-spool-key'
var spoolQueueName = 'chgate-spool'
var deploymentContainerName = 'app-package'

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    logAnalyticsName: names.logAnalytics
    appInsightsName: names.appInsights
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    name: names.storage
    deploymentContainerName: deploymentContainerName
    spoolName: spoolQueueName
    tags: tags
  }
}

module keyVault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  params: {
    location: location
    name: names.keyVault
    clickhousePasswordSecretName: clickhousePasswordSecretName
    clickhousePassword: clickhousePassword
    spoolKeySecretName: spoolKeySecretName
    spoolSigningKey: spoolSigningKey
    tags: tags
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    location: location
    name: names.functionApp
    planName: names.plan
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    spoolQueueName: storage.outputs.spoolQueueName
    appInsightsName: monitoring.outputs.appInsightsName
    keyVaultUri: keyVault.outputs.uri
    clickhousePasswordSecretName: clickhousePasswordSecretName
    spoolKeySecretName: spoolKeySecretName
    clickhouseUrl: clickhouseUrl
    clickhouseUser: clickhouseUser
    clickhouseDatabase: clickhouseDatabase
    entraTenantId: tenantId
    apiAudiences: [
      apiAudience
      apiClientId
    ]
    tags: tags
  }
}

module functionAppRoles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    keyVaultName: keyVault.outputs.name
    storageAccountName: storage.outputs.name
    functionAppPrincipalId: functionApp.outputs.principalId
    operatorPrincipalId: operatorPrincipalId
    operatorPrincipalType: operatorPrincipalType
  }
}

module functionAppSettings 'modules/appsettings.bicep' = {
  name: 'appsettings'
  params: {
    siteName: functionApp.outputs.name
    settings: functionApp.outputs.appSettings
  }
  // After the roles: see appsettings.bicep.
  dependsOn: [
    functionAppRoles
  ]
}

module apim 'modules/apim.bicep' = {
  name: 'apim'
  params: {
    location: location
    name: names.apim
    sku: apimSku
    publisherEmail: publisherEmail
    publisherName: publisherName
    entraTenantId: tenantId
    apiAudience: apiAudience
    apiClientId: apiClientId
    corsAllowedOrigin: corsAllowedOrigin
    apiPath: apiPath
    functionAppName: functionApp.outputs.name
    keyVaultName: keyVault.outputs.name
    appInsightsName: monitoring.outputs.appInsightsName
    tags: tags
  }
  // Reading the function host key needs a running host, and the host needs its storage roles
  // and its settings.
  dependsOn: [
    functionAppRoles
    functionAppSettings
  ]
}

@description('The API Management gateway, e.g. https://<name>.azure-api.net.')
output gatewayUrl string = apim.outputs.gatewayUrl
@description('Where the API\'s endpoints are: <gatewayUrl>/<apiPath>, e.g. .../chgate/v1/top-pages.')
output apiBaseUrl string = apim.outputs.apiBaseUrl
@description('ARM id of the API, for APIM request tracing (docs/apim.md).')
output apiId string = apim.outputs.apiId
output apimName string = apim.outputs.name
output functionAppName string = functionApp.outputs.name
@description('The Function App\'s host name: GET https://<host>/api/health answers without a token.')
output functionAppHostName string = functionApp.outputs.defaultHostName
output keyVaultName string = keyVault.outputs.name
output storageAccountName string = storage.outputs.name
